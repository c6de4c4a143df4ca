//! The lab's one error type: a clear sentence, with the cause chained in.

use std::fmt;

#[derive(Debug)]
pub struct LabError {
    msg: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl LabError {
    pub fn new(msg: impl Into<String>) -> Self {
        LabError {
            msg: msg.into(),
            source: None,
        }
    }
}

impl fmt::Display for LabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for LabError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Adds a sentence of context to any error.
pub trait Context<T> {
    fn context(self, msg: impl FnOnce() -> String) -> Result<T, LabError>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for Result<T, E> {
    fn context(self, msg: impl FnOnce() -> String) -> Result<T, LabError> {
        self.map_err(|e| LabError {
            msg: msg(),
            source: Some(Box::new(e)),
        })
    }
}

/// Shorthand for an error result.
pub fn fail<T>(msg: impl Into<String>) -> Result<T, LabError> {
    Err(LabError::new(msg))
}
