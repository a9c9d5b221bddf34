//! Why the domain refuses a command.

/// A refusal. Storage failures are never expressed here: the shell has its
/// own error for those.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The command itself is malformed: `field` says where, `reason` why.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// The command is well formed but the current state does not allow it.
    #[error("{field}: {reason}")]
    Refused { field: String, reason: String },
    /// The thing the command names does not exist.
    #[error("{what} not found")]
    NotFound { what: String },
    /// Something with that identity already exists, with other content.
    #[error("{field}: {reason}")]
    AlreadyExists { field: String, reason: String },
}

impl Error {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn refused(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Refused {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::NotFound { what: what.into() }
    }

    pub fn already_exists(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::AlreadyExists {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The field an invalid, refused or duplicate command names.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid { field, .. }
            | Self::Refused { field, .. }
            | Self::AlreadyExists { field, .. } => Some(field),
            Self::NotFound { .. } => None,
        }
    }

    /// The same error with its field placed under `prefix`, e.g.
    /// `times[0]` under `activities[2]`.
    pub fn within(self, prefix: &str) -> Self {
        let join = |f: String| {
            if f.is_empty() {
                prefix.to_owned()
            } else {
                format!("{prefix}.{f}")
            }
        };
        match self {
            Self::Invalid { field, reason } => Self::Invalid {
                field: join(field),
                reason,
            },
            Self::Refused { field, reason } => Self::Refused {
                field: join(field),
                reason,
            },
            other => other,
        }
    }
}
