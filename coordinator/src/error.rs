//! Coordinator errors, and the one place that turns them into gRPC statuses.

use kh::bounds::OutOfBounds;
use kh::names::InvalidName;
use kh::pki::PkiError;
use tonic::{Code, Status};

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Name(#[from] InvalidName),
    /// A request field beyond its bound (see `kh::bounds`).
    #[error("{0}")]
    Bounds(#[from] OutOfBounds),
    #[error("{0}")]
    InvalidArgument(String),
    /// Enrollment refused because of the token: unknown, used, expired, or for
    /// another node.
    #[error("{0}")]
    TokenRefused(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    /// A certificate that was valid once but has been replaced.
    #[error("{0}")]
    Superseded(String),
    /// A step of the operation failed on a node, after it may have changed
    /// something (not a refusal).
    #[error("{0}")]
    StepFailed(String),
}

impl CoordError {
    pub fn code(&self) -> Code {
        match self {
            CoordError::Store(StoreError::Locked { .. }) => Code::Unavailable,
            CoordError::Store(_) | CoordError::Pki(PkiError::KeyGen(_) | PkiError::Sign(_)) => {
                Code::Internal
            }
            CoordError::Pki(_)
            | CoordError::Name(_)
            | CoordError::Bounds(_)
            | CoordError::InvalidArgument(_) => Code::InvalidArgument,
            CoordError::TokenRefused(_) => Code::PermissionDenied,
            CoordError::AlreadyExists(_) => Code::AlreadyExists,
            CoordError::NotFound(_) => Code::NotFound,
            CoordError::FailedPrecondition(_) => Code::FailedPrecondition,
            CoordError::Unavailable(_) => Code::Unavailable,
            CoordError::Superseded(_) => Code::Unauthenticated,
            CoordError::StepFailed(_) => Code::Aborted,
        }
    }
}

impl From<CoordError> for Status {
    fn from(e: CoordError) -> Status {
        let code = e.code();
        if code == Code::Internal {
            tracing::error!(error = %e, "internal error");
        }
        Status::new(code, e.to_string())
    }
}
