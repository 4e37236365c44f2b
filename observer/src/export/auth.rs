//! Who may read `/api/*` when it is exposed beyond loopback: the kube-rbac-proxy pattern, in process.
//!
//! ```text
//!  Authorization: Bearer T ──▶ TokenReview(T) ── not authenticated ──▶ 401
//!                                 │ user, groups, uid, extra
//!                                 ▼
//!        SubjectAccessReview(user, nonResourceURL = request path, verb = get) ── denied ──▶ 403
//!                                 │ allowed
//!                                 ▼
//!                               200 (the handler)
//! ```
//!
//! Grant a reader `get` on the non-resource URLs `/api/v1/blocked` and `/api/v1/blocked/stream` with a
//! ClusterRole (deploy/components/api-exposed). The daemon's own ServiceAccount needs `create` on
//! `tokenreviews` and `subjectaccessreviews`. Answers are cached for [`KubeAuth::DEFAULT_TTL`] per (token,
//! path, verb), as kube-rbac-proxy does, so that a stream reconnecting or a polling client does not cost
//! two API calls per request.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::api::{Api, PostParams};

/// Errors asking the Kubernetes API about a token.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("creating a TokenReview: {source}")]
    TokenReview {
        #[source]
        source: Box<kube::Error>,
    },
    #[error("creating a SubjectAccessReview for user {user:?} ({verb} {path}): {source}")]
    SubjectAccessReview {
        user: String,
        path: String,
        verb: String,
        #[source]
        source: Box<kube::Error>,
    },
}

/// What the API server said about a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Authenticated and authorised.
    Allowed { user: String },
    /// The token is not valid (TokenReview: not authenticated): 401.
    Unauthenticated { reason: String },
    /// A valid user without the permission (SubjectAccessReview: not allowed): 403.
    Forbidden { user: String, reason: String },
}

type CacheKey = (String, String, String);

/// TokenReview + SubjectAccessReview through a kube client, with a short cache. Cheap to clone.
#[derive(Clone)]
pub struct KubeAuth {
    client: kube::Client,
    ttl: Duration,
    cache: Arc<Mutex<HashMap<CacheKey, (Decision, Instant)>>>,
}

impl KubeAuth {
    /// How long an answer is reused (kube-rbac-proxy's default is 2 minutes; shorter here so that a
    /// revoked binding takes effect quickly).
    pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
    /// Cached answers kept at most; beyond, the cache starts again empty.
    pub const CACHE_MAX: usize = 1024;

    pub fn new(client: kube::Client) -> Self {
        Self::with_ttl(client, Self::DEFAULT_TTL)
    }

    pub fn with_ttl(client: kube::Client, ttl: Duration) -> Self {
        Self {
            client,
            ttl,
            cache: Arc::default(),
        }
    }

    /// May the bearer of `token` do `verb` on the non-resource URL `path`?
    pub async fn check(&self, token: &str, path: &str, verb: &str) -> Result<Decision, AuthError> {
        let key = (token.to_owned(), path.to_owned(), verb.to_owned());
        if let Some(decision) = self.cached(&key) {
            return Ok(decision);
        }
        let decision = self.ask(token, path, verb).await?;
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= Self::CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, (decision.clone(), Instant::now()));
        Ok(decision)
    }

    fn cached(&self, key: &CacheKey) -> Option<Decision> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache
            .get(key)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(d, _)| d.clone())
    }

    async fn ask(&self, token: &str, path: &str, verb: &str) -> Result<Decision, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: None,
            },
            ..TokenReview::default()
        };
        let review = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|source| AuthError::TokenReview {
                source: Box::new(source),
            })?;
        let status = review.status.unwrap_or_default();
        let user = match (status.authenticated, status.user) {
            (Some(true), Some(user)) => user,
            _ => {
                return Ok(Decision::Unauthenticated {
                    reason: status
                        .error
                        .filter(|e| !e.is_empty())
                        .unwrap_or_else(|| "the token is not valid".to_owned()),
                });
            }
        };
        let username = user.username.clone().unwrap_or_default();
        let sar = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(path.to_owned()),
                    verb: Some(verb.to_owned()),
                }),
                resource_attributes: None,
            },
            ..SubjectAccessReview::default()
        };
        let sar = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &sar)
            .await
            .map_err(|source| AuthError::SubjectAccessReview {
                user: username.clone(),
                path: path.to_owned(),
                verb: verb.to_owned(),
                source: Box::new(source),
            })?;
        let status = sar.status.unwrap_or_default();
        Ok(if status.allowed {
            Decision::Allowed { user: username }
        } else {
            Decision::Forbidden {
                user: username,
                reason: status.reason.filter(|r| !r.is_empty()).unwrap_or_else(|| {
                    format!("no RBAC rule allows {verb} on the non-resource URL {path}")
                }),
            }
        })
    }
}
