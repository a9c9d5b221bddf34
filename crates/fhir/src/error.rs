use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Export(#[from] tend_export::Error),
    #[error("the participant directory could not be read: {0}")]
    Directory(String),
    #[error("the export stopped: {0}")]
    Stopped(String),
}
