//! The crate's one error type: which document, which field, what is wrong.

use std::fmt;

use crate::selector::SelectorError;

/// Where in a file a policy came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentRef {
    /// 1-based position of the document in the file (YAML `---` documents,
    /// or concatenated JSON values).
    pub index: usize,
    /// For an entry of a list (`kind: List`, `GlobalNetworkPolicyList`, or a
    /// top-level array): its 0-based position and how the list holds it
    /// (`items` or the array itself).
    pub item: Option<(ListForm, usize)>,
    /// `metadata.name`, when the document has a string there.
    pub name: Option<String>,
}

/// How a list holds its entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListForm {
    /// `kind: List` / `GlobalNetworkPolicyList` with `items`.
    Items,
    /// A top-level YAML sequence or JSON array.
    Array,
}

impl fmt::Display for DocumentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.index)?;
        match self.item {
            Some((ListForm::Items, i)) => write!(f, " items[{i}]")?,
            Some((ListForm::Array, i)) => write!(f, " [{i}]")?,
            None => {}
        }
        if let Some(name) = &self.name {
            write!(f, " ({name})")?;
        }
        Ok(())
    }
}

/// What is wrong.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The text is not YAML or JSON (`format` says which was tried).
    Syntax {
        format: &'static str,
        message: String,
    },
    /// A key netmod does not know; `expected` lists the keys allowed there.
    UnknownField { expected: Vec<&'static str> },
    /// A Calico field (or value) that netmod does not implement.
    Unsupported(String),
    /// A required field is missing.
    Missing,
    /// A value of the wrong JSON type.
    WrongType {
        expected: &'static str,
        found: String,
    },
    /// A value of the right type that is not acceptable.
    Invalid(String),
    /// A selector that does not parse.
    Selector(SelectorError),
    /// A second policy with a name already used in the same file.
    DuplicateName { first: DocumentRef },
}

/// A policy file that cannot be accepted, or a policy value that is not valid.
#[derive(Clone, Debug, PartialEq)]
pub struct Error {
    inner: Box<Inner>,
}

#[derive(Clone, Debug, PartialEq)]
struct Inner {
    document: Option<DocumentRef>,
    path: String,
    kind: ErrorKind,
}

impl Error {
    pub(crate) fn new(path: impl Into<String>, kind: ErrorKind) -> Error {
        Error {
            inner: Box::new(Inner {
                document: None,
                path: path.into(),
                kind,
            }),
        }
    }

    pub(crate) fn invalid(path: impl Into<String>, message: impl Into<String>) -> Error {
        Error::new(path, ErrorKind::Invalid(message.into()))
    }

    pub(crate) fn unsupported(path: impl Into<String>, message: impl Into<String>) -> Error {
        Error::new(path, ErrorKind::Unsupported(message.into()))
    }

    pub(crate) fn in_document(mut self, document: &DocumentRef) -> Error {
        if self.inner.document.is_none() {
            self.inner.document = Some(document.clone());
        }
        self
    }

    /// The document, when the error is inside one.
    pub fn document(&self) -> Option<&DocumentRef> {
        self.inner.document.as_ref()
    }

    /// The field path inside the document, like
    /// `spec.ingress[0].destination.ports[1]`; empty for the whole document.
    pub fn path(&self) -> &str {
        &self.inner.path
    }

    /// What is wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.inner.kind
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(doc) = self.document() {
            write!(f, "{doc}: ")?;
        }
        if !self.path().is_empty() {
            write!(f, "{}: ", self.path())?;
        }
        match self.kind() {
            ErrorKind::Syntax { format, message } => write!(f, "not valid {format}: {message}"),
            ErrorKind::UnknownField { expected } => {
                write!(f, "unknown field; expected one of: {}", expected.join(", "))
            }
            ErrorKind::Unsupported(message) => write!(f, "not supported by netmod: {message}"),
            ErrorKind::Missing => f.write_str("required but missing"),
            ErrorKind::WrongType { expected, found } => {
                write!(f, "expected {expected}, found {found}")
            }
            ErrorKind::Invalid(message) => f.write_str(message),
            ErrorKind::Selector(e) => write!(f, "bad selector: {e}"),
            ErrorKind::DuplicateName { first } => {
                write!(f, "the name is already used by {first}")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self.kind() {
            ErrorKind::Selector(e) => Some(e),
            _ => None,
        }
    }
}
