//! ConfigError: why a config was refused, one sentence per problem with `file:line:col`.

use std::fmt;
use std::io;

/// One problem in a config file, located where the YAML allows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file as the user named it (`lb.yaml`), so the sentence points where they look.
    pub origin: String,
    /// 1-based line and column, when known.
    pub position: Option<(usize, usize)>,
    /// `field.path: what is wrong`.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.position {
            Some((line, col)) => write!(f, "{}:{line}:{col}: {}", self.origin, self.message),
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

/// Why a config could not be loaded. The running config, if any, is untouched by it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{origin}: cannot read the config: {source}")]
    Read {
        /// The file as the user named it.
        origin: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The file was read but is not a valid config; every problem found is listed.
    #[error("{}", Lines(.0))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    /// The file holds nothing but blank lines and comments.
    pub(crate) fn empty(origin: &str) -> Self {
        ConfigError::Invalid(vec![Diagnostic {
            origin: origin.to_owned(),
            position: None,
            message: "the file is empty; expected at least `listeners` and `backends`".to_owned(),
        }])
    }
}

struct Lines<'a>(&'a [Diagnostic]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            d.fmt(f)?;
        }
        Ok(())
    }
}

/// Turns serde_yaml's error into our sentence: position moved to the front, where
/// compilers put it, and the rest of serde_yaml's text (`path: message`) kept.
pub(crate) fn from_yaml(origin: &str, err: &serde_yaml::Error) -> Diagnostic {
    let text = err.to_string();
    let position = err.location().map(|l| (l.line(), l.column()));
    let message = match position {
        Some((line, col)) => text.replacen(&format!(" at line {line} column {col}"), "", 1),
        None => text,
    };
    Diagnostic {
        origin: origin.to_owned(),
        position,
        message: one_line(&message),
    }
}

/// serde_yaml quotes what the user wrote, line breaks included (an unknown key that
/// spans lines); escaped, one problem stays one line that starts with its position.
fn one_line(text: &str) -> String {
    if !text.contains(['\n', '\r']) {
        return text.to_owned();
    }
    text.replace('\r', "\\r").replace('\n', "\\n")
}
