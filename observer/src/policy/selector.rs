//! Label selector matching with the apimachinery semantics.

use std::fmt;

use super::model::{Labels, Operator, Requirement, Selector};

impl Requirement {
    /// Whether `labels` satisfy this requirement. `NotIn` holds when the key is absent, as upstream.
    #[must_use]
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::Equals | Operator::In => {
                value.is_some_and(|v| self.values.iter().any(|x| &**x == v))
            }
            Operator::NotIn => value.is_none_or(|v| !self.values.iter().any(|x| &**x == v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

impl Selector {
    /// The selector that matches everything (`{}`).
    #[must_use]
    pub fn everything() -> Self {
        Self::default()
    }

    /// Whether this is `{}`.
    #[must_use]
    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether all requirements hold for `labels`.
    #[must_use]
    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// The first requirement `labels` fail, for explanations.
    #[must_use]
    pub fn first_mismatch(&self, labels: &Labels) -> Option<&Requirement> {
        self.requirements.iter().find(|r| !r.matches(labels))
    }
}

impl fmt::Display for Requirement {
    /// The `kubectl -l` spelling: `k=v`, `k in (a,b)`, `k notin (a)`, `k`, `!k`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |f: &mut fmt::Formatter<'_>| -> fmt::Result {
            for (i, v) in self.values.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                f.write_str(v)?;
            }
            Ok(())
        };
        match self.operator {
            Operator::Equals => {
                write!(f, "{}=", self.key)?;
                list(f)
            }
            Operator::In => {
                write!(f, "{} in (", self.key)?;
                list(f)?;
                f.write_str(")")
            }
            Operator::NotIn => {
                write!(f, "{} notin (", self.key)?;
                list(f)?;
                f.write_str(")")
            }
            Operator::Exists => write!(f, "{}", self.key),
            Operator::DoesNotExist => write!(f, "!{}", self.key),
        }
    }
}

impl fmt::Display for Selector {
    /// The `kubectl -l` spelling, `{}` for the match-everything selector.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("{}");
        }
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}
