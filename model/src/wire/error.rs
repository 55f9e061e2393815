//! What can go wrong turning wire records into [`crate::FlowRecord`]s, and reading files of
//! them.

/// A protobuf record that does not make a [`crate::FlowRecord`]: the field (dotted, as in
/// the .proto) and the value found there.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("field {field} is missing")]
    Missing { field: &'static str },
    #[error("field {field} is unspecified (0)")]
    Unspecified { field: &'static str },
    #[error("field {field}: {value} is not a value of its enum")]
    UnknownEnum { field: &'static str, value: i32 },
    #[error("field {field}: an address is 4 or 16 bytes, not {len}")]
    IpLength { field: &'static str, len: usize },
    #[error("field {field}: {value} is out of range (at most {max})")]
    OutOfRange {
        field: &'static str,
        value: u32,
        max: u32,
    },
    /// Times are milliseconds since the epoch between 1970 and the end of year 9999.
    #[error("field {field}: {value} is not a time in milliseconds since the epoch")]
    Time { field: &'static str, value: i64 },
}

/// Reading a file (or stream) of flow records. Each error names the source (the label
/// given to [`super::FlowReader::new`], e.g. the file's path) and the record: its number
/// (1-based, counted from where the reader started) and where it starts (a byte offset,
/// and for JSON lines the line number).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading {name}")]
    Io {
        name: String,
        #[source]
        source: std::io::Error,
    },
    /// A JSON line that is not a flow record; the source names the field.
    #[error("{name}: line {line} (record {record}) is not a flow record")]
    Json {
        name: String,
        line: u64,
        record: u64,
        #[source]
        source: serde_path_to_error::Error<serde_json::Error>,
    },
    /// A length-delimited protobuf record that does not decode.
    #[error("{name}: record {record} at byte {offset} does not decode")]
    Decode {
        name: String,
        record: u64,
        offset: u64,
        #[source]
        source: prost::DecodeError,
    },
    /// A record that decodes but does not make a flow record.
    #[error("{name}: record {record} at byte {offset} is not a valid flow record")]
    Convert {
        name: String,
        record: u64,
        offset: u64,
        #[source]
        source: ConvertError,
    },
    /// A length prefix too large for any flow record: the file is not length-delimited
    /// protobuf, or is corrupt from here on (the reader stops).
    #[error(
        "{name}: record {record} at byte {offset} claims {len} bytes (at most {max}): not a \
         file of flow records, or corrupt"
    )]
    TooLong {
        name: String,
        record: u64,
        offset: u64,
        len: u64,
        max: u64,
    },
    /// The input ends inside a record: a writer may still be writing it. Reading again
    /// later goes on where this stopped (or a new reader starts at
    /// [`super::FlowReader::position`]).
    #[error("{name}: record {record} at byte {offset} is cut short by the end of the input")]
    Truncated {
        name: String,
        record: u64,
        offset: u64,
    },
}

impl ReadError {
    /// The input ended inside a record (see [`ReadError::Truncated`]).
    pub fn is_truncated(&self) -> bool {
        matches!(self, Self::Truncated { .. })
    }
}
