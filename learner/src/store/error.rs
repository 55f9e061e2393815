//! What can go wrong with the store, always naming its file.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the learner store {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the learner store {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{path} is not a Palisade learner store: {detail}; left as it is")]
    NotADatabase { path: PathBuf, detail: String },
    #[error(
        "{path} is not a Palisade learner store: it is an SQLite database of another application ({what}); left as it is"
    )]
    Foreign { path: PathBuf, what: String },
    #[error(
        "the learner store {path} has schema version {found}, this build reads version {supported}{}; left as it is",
        if *found > *supported { " (written by a newer Palisade)" } else { "" }
    )]
    SchemaVersion {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    /// The file is (or was) a store, but SQLite or the store's own checks find it damaged.
    /// Move it away to start a new baseline; it is never reset silently.
    #[error("the learner store {path} is corrupt: {problem}")]
    Corrupt {
        path: PathBuf,
        problem: String,
        #[source]
        source: Option<rusqlite::Error>,
    },
    #[error("learner store {path}: {op} failed")]
    Sqlite {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
}

impl Error {
    /// `source` from `op` on the store at `path`: corruption when SQLite says so.
    pub(super) fn sqlite(
        path: &std::path::Path,
        op: &'static str,
        source: rusqlite::Error,
    ) -> Self {
        use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
        let path = path.to_owned();
        match source.sqlite_error_code() {
            Some(DatabaseCorrupt | NotADatabase) => Error::Corrupt {
                path,
                problem: format!("SQLite reports it malformed during {op}"),
                source: Some(source),
            },
            _ => Error::Sqlite { path, op, source },
        }
    }
}
