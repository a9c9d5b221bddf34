/// What the privacy layer can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("master key `{0}` wraps stored data keys but is not configured")]
    UnknownMasterKey(String),
    /// The participant was erased: nothing of theirs can be sealed or read.
    #[error("the participant was erased at their request")]
    Erased,
    #[error("a sealed value failed authentication")]
    Corrupt,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}
