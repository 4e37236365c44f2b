//! Loading cluster objects from manifest files (YAML or JSON).
