//! Files of flow records: JSON lines (one [`FlowRecord`] object per line) or
//! length-delimited protobuf (each [`v1::FlowRecord`] preceded by its length as a varint,
//! as prost's `encode_length_delimited` writes it).
//!
//! [`FlowReader`] tells the two apart by the first bytes, reads files a writer is still
//! appending to (a record cut short by the end is reported as [`ReadError::Truncated`],
//! and reading again goes on where it stopped), and says how far it got
//! ([`FlowReader::position`]) so a restarted reader can resume there.

use std::{
    fmt,
    io::{self, BufRead, Read, Write},
};

use prost::Message as _;
use serde::Deserialize as _;

use super::{ReadError, v1};
use crate::FlowRecord;

/// The longest protobuf record a reader accepts. Records are a few hundred bytes; a
/// longer length prefix means the input is not a file of records (or is corrupt), and
/// allocating what it claims could take the reader down.
pub const MAX_RECORD_LEN: u64 = 1 << 20;

/// How a file of records is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// One JSON object ([`FlowRecord`]) per line.
    JsonLines,
    /// Length-delimited [`v1::FlowRecord`]s: a varint length, then the message.
    Protobuf,
}

impl Format {
    /// The format of input that starts with `head`; `None` while `head` is too short to
    /// tell (empty, only whitespace, or a lone `{`).
    ///
    /// JSON lines start with `{` after optional whitespace, and the `{` is followed by `"`,
    /// `}` or whitespace. A protobuf file starts with its first record's length: a varint
    /// whose first byte is `{` (0x7b) for a record of 123 bytes, or whitespace for one of
    /// 9, 10, 13 or 32 bytes. So the byte after the `{` decides too: in a protobuf record
    /// it is the message's first tag, which for a record with a time (every record has
    /// one) is that of field 1 (0x08), never `"`, `}` or whitespace.
    pub fn detect(head: &[u8]) -> Option<Self> {
        let start = head.iter().position(|b| !is_json_space(*b))?;
        if head[start] != b'{' {
            return Some(Self::Protobuf);
        }
        let next = *head.get(start + 1)?;
        Some(if next == b'"' || next == b'}' || is_json_space(next) {
            Self::JsonLines
        } else {
            Self::Protobuf
        })
    }

    /// `json` or `protobuf`, as the agent's `--output-format` names it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::JsonLines => "json",
            Self::Protobuf => "protobuf",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

const fn is_json_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Writes records in one [`Format`]. Each record goes to `out` in one `write_all` call; wrap
/// a file in a `BufWriter` and [`flush`](Self::flush) after a batch.
pub struct FlowWriter<W: Write> {
    out: W,
    format: Format,
    /// One encoded record, reused.
    buf: Vec<u8>,
}

impl<W: Write> FlowWriter<W> {
    pub fn new(out: W, format: Format) -> Self {
        Self {
            out,
            format,
            buf: Vec::with_capacity(512),
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn write(&mut self, record: &FlowRecord) -> io::Result<()> {
        self.buf.clear();
        match self.format {
            Format::JsonLines => {
                serde_json::to_writer(&mut self.buf, record)?;
                self.buf.push(b'\n');
            }
            Format::Protobuf => v1::FlowRecord::from(record)
                .encode_length_delimited(&mut self.buf)
                .expect("a Vec grows as needed"),
        }
        self.out.write_all(&self.buf)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn get_ref(&self) -> &W {
        &self.out
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Reads records from a file or stream in either [`Format`], told apart by its first
/// bytes (see [`Format::detect`]).
///
/// Iterating yields [`FlowRecord`]s; [`next_proto`](Self::next_proto) is the fast path
/// that decodes protobuf input into one reused message.
///
/// # Following a file a writer appends to
/// At the end of the input the reader returns `None` (`Ok(false)` from `next_proto`). A
/// record cut short by the end is reported once as [`ReadError::Truncated`], then the
/// reader returns end until more bytes arrive; the bytes read so far are kept, so calling
/// it again after waiting goes on where it stopped (the reader is not fused). A
/// `BufReader<File>` reads what was appended after it saw the end.
///
/// # Resuming after a restart
/// [`position`](Self::position) is the byte offset just past the last complete record.
/// To resume, open the file, seek it to that offset, and pass the offset to
/// [`resume`](Self::resume): the format is detected again from the record there, and
/// positions and byte offsets in errors count from the start of the file (record and line
/// numbers count from where the reader started).
///
/// A record that does not parse or convert is reported and skipped: the next call reads
/// the record after it. Only a protobuf length prefix that makes no sense stops the
/// reader (the records after it cannot be found).
pub struct FlowReader<R> {
    input: Input<R>,
    name: String,
    format: Option<Format>,
    /// The record being read: a JSON line, or a protobuf length prefix and message.
    buf: Vec<u8>,
    /// Protobuf: the length of the prefix and of prefix plus message, once the prefix is
    /// complete.
    frame: Option<(usize, usize)>,
    position: u64,
    records: u64,
    lines: u64,
    /// JSON: the last record ended at the end of the input without a newline; a newline
    /// that arrives later ends that line, not a new one.
    open_line: bool,
    /// The bytes held (`position` plus the partial record) when `Truncated` was reported.
    truncated_at: Option<u64>,
    stopped: bool,
}

impl<R: BufRead> FlowReader<R> {
    /// A reader of `input` from its start; `name` (e.g. the file's path) labels errors.
    pub fn new(input: R, name: impl Into<String>) -> Self {
        Self::resume(input, name, 0)
    }

    /// A reader of `input`, which is positioned at byte `offset` of the file (a record
    /// boundary, such as an earlier reader's [`position`](Self::position)).
    pub fn resume(input: R, name: impl Into<String>, offset: u64) -> Self {
        Self {
            input: Input {
                head: Vec::new(),
                head_pos: 0,
                inner: input,
            },
            name: name.into(),
            format: None,
            buf: Vec::with_capacity(512),
            frame: None,
            position: offset,
            records: 0,
            lines: 0,
            open_line: false,
            truncated_at: None,
            stopped: false,
        }
    }

    /// The input's format; `None` until its first bytes have arrived.
    pub fn format(&self) -> Option<Format> {
        self.format
    }

    /// The byte offset just past the last complete record (and any blank lines after it).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Records read so far, good or bad.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The label errors carry.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next record; `None` at the end of the input.
    pub fn next_record(&mut self) -> Result<Option<FlowRecord>, ReadError> {
        if !self.fill_record()? {
            return Ok(None);
        }
        match self.format {
            Some(Format::JsonLines) => self.json_record(),
            _ => {
                let (record, offset) = (self.records + 1, self.position);
                let decoded = v1::FlowRecord::decode(self.message());
                self.finish_record();
                let msg = decoded.map_err(|source| ReadError::Decode {
                    name: self.name.clone(),
                    record,
                    offset,
                    source,
                })?;
                FlowRecord::try_from(msg)
                    .map(Some)
                    .map_err(|source| ReadError::Convert {
                        name: self.name.clone(),
                        record,
                        offset,
                        source,
                    })
            }
        }
    }

    /// The next record into `msg`, reusing its allocations where prost can; `false` at
    /// the end of the input. Protobuf input is decoded as it is (`msg.clear()`, then
    /// `merge`), without the checks of the conversion to [`FlowRecord`]; a JSON line is
    /// parsed and converted.
    pub fn next_proto(&mut self, msg: &mut v1::FlowRecord) -> Result<bool, ReadError> {
        if self.detect_format()? == Some(Format::JsonLines) {
            return Ok(match self.next_record()? {
                Some(record) => {
                    *msg = record.into();
                    true
                }
                None => false,
            });
        }
        self.next_frame(|bytes| {
            msg.clear();
            msg.merge(bytes)
        })
    }

    /// The input's format, reading its first bytes if need be; `None` while the input has
    /// too few bytes to tell.
    pub fn detect_format(&mut self) -> Result<Option<Format>, ReadError> {
        match self.format {
            Some(format) => Ok(Some(format)),
            None => self.detect(),
        }
    }

    /// The next protobuf record, decoded by `decode` from the message's bytes: for readers
    /// that decode only the fields they need, in place. `false` at the end of the input.
    /// Protobuf input only (see [`detect_format`](Self::detect_format)): JSON lines are
    /// read with [`next_record`](Self::next_record).
    pub fn next_frame(
        &mut self,
        decode: impl FnOnce(&[u8]) -> Result<(), prost::DecodeError>,
    ) -> Result<bool, ReadError> {
        if self.detect_format()? == Some(Format::JsonLines) {
            let wrong = io::Error::new(
                io::ErrorKind::InvalidInput,
                "JSON lines, not length-delimited protobuf",
            );
            return Err(self.io(wrong));
        }
        let (record, offset) = (self.records + 1, self.position);
        let decoded = match self.whole_frame_in_input() {
            // The usual case: the record is whole in the input's buffer: decode it there.
            Some((prefix, total)) => {
                let decoded = match self.input.fill_buf() {
                    Ok(chunk) => decode(&chunk[prefix..total]),
                    Err(source) => return Err(self.io(source)),
                };
                self.input.consume(total);
                self.position += total as u64;
                self.records += 1;
                self.truncated_at = None;
                decoded
            }
            None => {
                if !self.fill_record()? {
                    return Ok(false);
                }
                let decoded = decode(self.message());
                self.finish_record();
                decoded
            }
        };
        decoded.map_err(|source| ReadError::Decode {
            name: self.name.clone(),
            record,
            offset,
            source,
        })?;
        Ok(true)
    }

    /// When no record is partly read and the input's buffer holds the next record whole:
    /// the ends of its length prefix and of the record in that buffer.
    fn whole_frame_in_input(&mut self) -> Option<(usize, usize)> {
        if self.stopped || !self.buf.is_empty() {
            return None;
        }
        let chunk = self.input.fill_buf().ok()?;
        let mut rest = chunk;
        let len = prost::encoding::decode_varint(&mut rest).ok()?;
        let prefix = chunk.len() - rest.len();
        (len <= MAX_RECORD_LEN && len <= rest.len() as u64).then(|| (prefix, prefix + len as usize))
    }

    /// Read until `buf` holds one whole record (`true`), or the input ends (`false`, or
    /// `Truncated` inside a record).
    fn fill_record(&mut self) -> Result<bool, ReadError> {
        if self.stopped {
            return Ok(false);
        }
        let format = match self.format {
            Some(format) => format,
            None => match self.detect()? {
                Some(format) => format,
                // Only a lone `{` can be the start of a record; whitespace is nothing yet.
                None if self.input.head.iter().all(|b| is_json_space(*b)) => return Ok(false),
                None => return self.truncated(self.input.head.len()),
            },
        };
        match format {
            Format::JsonLines => self.fill_line(),
            Format::Protobuf => self.fill_frame(),
        }
    }

    /// Take in bytes until the format shows; the bytes stay in `input.head` for the records.
    fn detect(&mut self) -> Result<Option<Format>, ReadError> {
        loop {
            if let Some(format) = Format::detect(&self.input.head) {
                self.format = Some(format);
                return Ok(Some(format));
            }
            let chunk = match self.input.inner.fill_buf() {
                Ok(chunk) => chunk,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(self.io(source)),
            };
            if chunk.is_empty() {
                return Ok(None);
            }
            let n = chunk.len();
            self.input.head.extend_from_slice(chunk);
            self.input.inner.consume(n);
        }
    }

    fn fill_line(&mut self) -> Result<bool, ReadError> {
        loop {
            if let Err(source) = self.input.read_until(b'\n', &mut self.buf) {
                return Err(self.io(source));
            }
            let complete = self.buf.ends_with(b"\n");
            let blank = self.buf.iter().all(|b| is_json_space(*b));
            if !complete {
                // The end of the input: nothing, or a last line without a newline (which
                // `parse_json` tells from a line still being written).
                return if blank { Ok(false) } else { Ok(true) };
            }
            if !blank {
                return Ok(true);
            }
            if !std::mem::take(&mut self.open_line) {
                self.lines += 1;
            }
            self.position += self.buf.len() as u64;
            self.buf.clear();
            self.truncated_at = None;
        }
    }

    /// The JSON line in `buf` as a record; `None` when it is a line still being written
    /// that was reported as truncated before.
    fn json_record(&mut self) -> Result<Option<FlowRecord>, ReadError> {
        let complete = self.buf.ends_with(b"\n");
        let parsed = parse_json(&self.buf);
        if let Err(e) = &parsed
            && !complete
            && e.inner().is_eof()
        {
            return self.truncated(self.buf.len()).map(|_| None);
        }
        let (record, line) = (self.records + 1, self.lines + 1);
        self.finish_record();
        self.open_line = !complete;
        parsed.map(Some).map_err(|source| ReadError::Json {
            name: self.name.clone(),
            line,
            record,
            source,
        })
    }

    fn fill_frame(&mut self) -> Result<bool, ReadError> {
        loop {
            let chunk = match self.input.fill_buf() {
                Ok(chunk) => chunk,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(self.io(source)),
            };
            if chunk.is_empty() {
                return if self.buf.is_empty() {
                    Ok(false)
                } else {
                    self.truncated(self.buf.len())
                };
            }
            let Some((_, total)) = self.frame else {
                // The length prefix, a byte at a time (it is one to three bytes).
                let byte = chunk[0];
                self.input.consume(1);
                self.buf.push(byte);
                if byte & 0x80 == 0 || self.buf.len() == 10 {
                    self.start_frame()?;
                }
                continue;
            };
            let n = (total - self.buf.len()).min(chunk.len());
            self.buf.extend_from_slice(&chunk[..n]);
            self.input.consume(n);
            if self.buf.len() == total {
                return Ok(true);
            }
        }
    }

    /// The length prefix in `buf` is complete: set `frame`.
    fn start_frame(&mut self) -> Result<(), ReadError> {
        let (record, offset) = (self.records + 1, self.position);
        let len = match prost::encoding::decode_varint(&mut self.buf.as_slice()) {
            Ok(len) => len,
            Err(source) => {
                self.stopped = true;
                return Err(ReadError::Decode {
                    name: self.name.clone(),
                    record,
                    offset,
                    source,
                });
            }
        };
        if len > MAX_RECORD_LEN {
            self.stopped = true;
            return Err(ReadError::TooLong {
                name: self.name.clone(),
                record,
                offset,
                len,
                max: MAX_RECORD_LEN,
            });
        }
        let prefix = self.buf.len();
        // At most MAX_RECORD_LEN, so it fits.
        let total = prefix + len as usize;
        self.frame = Some((prefix, total));
        self.buf.reserve(total - prefix);
        Ok(())
    }

    /// The message of the protobuf record in `buf`.
    fn message(&self) -> &[u8] {
        let (prefix, total) = self.frame.expect("a whole record was read");
        &self.buf[prefix..total]
    }

    /// The record in `buf` is done with: count it and move past it.
    fn finish_record(&mut self) {
        self.position += self.buf.len() as u64;
        self.records += 1;
        if self.format == Some(Format::JsonLines) {
            self.lines += 1;
        }
        self.buf.clear();
        self.frame = None;
        self.truncated_at = None;
    }

    /// The input ended `partial` bytes into a record: `Truncated` the first time, the end
    /// of the input while no more bytes arrive.
    fn truncated(&mut self, partial: usize) -> Result<bool, ReadError> {
        let held = self.position + partial as u64;
        if self.truncated_at == Some(held) {
            return Ok(false);
        }
        self.truncated_at = Some(held);
        Err(ReadError::Truncated {
            name: self.name.clone(),
            record: self.records + 1,
            offset: self.position,
        })
    }

    fn io(&self, source: io::Error) -> ReadError {
        ReadError::Io {
            name: self.name.clone(),
            source,
        }
    }
}

impl<R: BufRead> Iterator for FlowReader<R> {
    type Item = Result<FlowRecord, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}

/// One JSON line; on error, parsed again to name the field (only then: tracking the path
/// costs on every record).
fn parse_json(line: &[u8]) -> Result<FlowRecord, serde_path_to_error::Error<serde_json::Error>> {
    let plain = match serde_json::from_slice(line) {
        Ok(record) => return Ok(record),
        Err(e) => e,
    };
    let mut de = serde_json::Deserializer::from_slice(line);
    let mut track = serde_path_to_error::Track::new();
    let error = match FlowRecord::deserialize(serde_path_to_error::Deserializer::new(
        &mut de, &mut track,
    )) {
        Err(e) => e,
        // Only the end check (trailing characters) failed.
        Ok(_) => plain,
    };
    Err(serde_path_to_error::Error::new(track.path(), error))
}

/// The input, after the bytes taken in to detect its format.
struct Input<R> {
    head: Vec<u8>,
    head_pos: usize,
    inner: R,
}

impl<R: BufRead> Read for Input<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.fill_buf()?.read(out)?;
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Input<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.head_pos < self.head.len() {
            Ok(&self.head[self.head_pos..])
        } else {
            self.inner.fill_buf()
        }
    }

    fn consume(&mut self, n: usize) {
        if self.head_pos < self.head.len() {
            self.head_pos += n;
            if self.head_pos == self.head.len() {
                self.head = Vec::new();
                self.head_pos = 0;
            }
        } else {
            self.inner.consume(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufReader, Cursor, Seek as _, SeekFrom};

    use super::*;

    fn records() -> Vec<FlowRecord> {
        let base = r#"{"time":"2026-11-28T10:00:00.000Z","kind":"new","interface":"pl-t-1",
            "ifindex":7,"endpoint":7,"direction":"egress","protocol":"tcp",
            "local":{"ip":"10.244.0.2","port":40000,"pod":"shop/frontend-0"},
            "remote":{"ip":"10.96.0.10","port":80,"service":"shop/api"},
            "verdict":"allow","mode":"enforce","reason":"open"}"#;
        let first: FlowRecord = serde_json::from_str(base).unwrap();
        let mut second = first.clone();
        second.kind = FlowKind::Stats;
        second.time = "2026-11-28T10:00:10.500Z".into();
        second.first_seen = Some(first.time.clone());
        second.reason = None;
        second.counters = Some(crate::Counters {
            packets_from_pod: 3,
            bytes_from_pod: 200,
            packets_to_pod: 2,
            bytes_to_pod: 4000,
        });
        let mut third = first.clone();
        third.remote.ip = "2001:db8::7".parse().unwrap();
        third.remote.service = None;
        third.remote.labels = [("app".to_owned(), "x".to_owned())].into();
        vec![first, second, third]
    }

    fn written(format: Format, records: &[FlowRecord]) -> Vec<u8> {
        let mut writer = FlowWriter::new(Vec::new(), format);
        for r in records {
            writer.write(r).unwrap();
        }
        writer.into_inner()
    }

    fn read_all(bytes: &[u8]) -> (Option<Format>, Vec<FlowRecord>) {
        let mut reader = FlowReader::new(bytes, "test");
        let records = reader.by_ref().collect::<Result<Vec<_>, _>>().unwrap();
        (reader.format(), records)
    }

    use crate::FlowKind;

    #[test]
    fn both_formats_round_trip_and_are_detected() {
        let records = records();
        for format in [Format::JsonLines, Format::Protobuf] {
            let bytes = written(format, &records);
            assert_eq!(Format::detect(&bytes), Some(format));
            assert_eq!(
                read_all(&bytes),
                (Some(format), records.clone()),
                "{format}"
            );
        }
        let json = written(Format::JsonLines, &records);
        assert_eq!(json.iter().filter(|b| **b == b'\n').count(), 3);
    }

    #[test]
    fn the_fast_path_reads_both_formats() {
        let records = records();
        for format in [Format::JsonLines, Format::Protobuf] {
            let bytes = written(format, &records);
            let mut reader = FlowReader::new(bytes.as_slice(), "test");
            let mut msg = v1::FlowRecord::default();
            for r in &records {
                assert!(reader.next_proto(&mut msg).unwrap(), "{format}");
                assert_eq!(&FlowRecord::try_from(msg.clone()).unwrap(), r, "{format}");
            }
            assert!(!reader.next_proto(&mut msg).unwrap());
            assert_eq!(reader.position(), bytes.len() as u64);
        }
    }

    #[test]
    fn detection_looks_past_whitespace_and_at_the_byte_after_the_brace() {
        assert_eq!(Format::detect(b""), None);
        assert_eq!(Format::detect(b" \n\t"), None);
        assert_eq!(Format::detect(b"{"), None, "one byte cannot tell");
        assert_eq!(Format::detect(b"\n {\"time\""), Some(Format::JsonLines));
        assert_eq!(Format::detect(b"{ \"time\""), Some(Format::JsonLines));
        assert_eq!(Format::detect(b"{}"), Some(Format::JsonLines));
        // A record of 123 bytes: its length is `{`, then the tag of field 1.
        assert_eq!(Format::detect(b"{\x08\x01"), Some(Format::Protobuf));
        // A record of 10 bytes starts with a newline.
        assert_eq!(Format::detect(b"\n\x08\x01"), Some(Format::Protobuf));
        assert_eq!(Format::detect(&[0x9c, 0x01, 0x08]), Some(Format::Protobuf));
    }

    #[test]
    fn a_protobuf_record_of_123_bytes_is_not_json() {
        let mut r = records().remove(0);
        let len = |r: &FlowRecord| v1::FlowRecord::from(r).encoded_len();
        // Grow the interface name until the message is exactly 123 bytes long.
        while len(&r) < 123 {
            r.interface.push('x');
        }
        assert_eq!(len(&r), 123);
        let bytes = written(Format::Protobuf, &[r.clone(), r.clone()]);
        assert_eq!(bytes[0], b'{');
        assert_eq!(
            read_all(&bytes),
            (Some(Format::Protobuf), vec![r.clone(), r])
        );
    }

    #[test]
    fn a_bad_json_line_names_the_source_line_and_field() {
        let mut bytes = written(Format::JsonLines, &records()[..1]);
        bytes.extend_from_slice(b"\n");
        bytes.extend_from_slice(br#"{"time":"x","kind":"sideways"}"#);
        bytes.extend_from_slice(b"\n");
        bytes.extend_from_slice(&written(Format::JsonLines, &records()[1..2]));
        let mut reader = FlowReader::new(bytes.as_slice(), "/var/flows.jsonl");
        assert!(reader.next().unwrap().is_ok());
        let err = reader.next().unwrap().unwrap_err();
        let ReadError::Json {
            name,
            line,
            record,
            source,
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!((name.as_str(), *line, *record), ("/var/flows.jsonl", 3, 2));
        assert_eq!(source.path().to_string(), "kind");
        assert!(source.to_string().contains("sideways"), "{source}");
        assert_eq!(
            err.to_string(),
            "/var/flows.jsonl: line 3 (record 2) is not a flow record"
        );
        // The bad line is skipped.
        assert_eq!(reader.next().unwrap().unwrap(), records()[1]);
        assert!(reader.next().is_none());
    }

    #[test]
    fn a_missing_field_is_named() {
        let bytes = b"{\"time\":\"2026-11-28T10:00:00.000Z\"}\n";
        let err = FlowReader::new(&bytes[..], "f")
            .next()
            .unwrap()
            .unwrap_err();
        let ReadError::Json { source, .. } = err else {
            panic!("{err:?}");
        };
        assert!(
            source.to_string().contains("missing field `kind`"),
            "{source}"
        );
    }

    #[test]
    fn a_bad_protobuf_record_names_its_offset() {
        let good = written(Format::Protobuf, &records()[..1]);
        let mut bytes = good.clone();
        // A record whose direction is unspecified.
        let mut msg = v1::FlowRecord::from(&records()[0]);
        msg.direction = 0;
        msg.encode_length_delimited(&mut bytes).unwrap();
        // And one that does not decode: field 1 with a truncated varint.
        bytes.extend_from_slice(&[2, 0x08, 0x80]);
        let mut reader = FlowReader::new(bytes.as_slice(), "flows.pb");
        assert!(reader.next().unwrap().is_ok());
        let err = reader.next().unwrap().unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "flows.pb: record 2 at byte {} is not a valid flow record",
                good.len()
            )
        );
        let err = reader.next().unwrap().unwrap_err();
        assert!(
            matches!(err, ReadError::Decode { record: 3, .. }),
            "{err:?}"
        );
        assert!(reader.next().is_none());
        assert_eq!(reader.records(), 3);
        assert_eq!(reader.position(), bytes.len() as u64);
    }

    #[test]
    fn a_length_beyond_any_record_stops_the_reader() {
        let mut bytes = vec![0x9c, 0x01];
        prost::encoding::encode_varint(MAX_RECORD_LEN + 1, &mut bytes);
        let mut reader = FlowReader::new(&bytes[2..], "junk");
        let err = reader.next().unwrap().unwrap_err();
        assert!(
            matches!(err, ReadError::TooLong { offset: 0, .. }),
            "{err:?}"
        );
        assert!(reader.next().is_none());
    }

    #[test]
    fn position_advances_by_record() {
        let records = records();
        for format in [Format::JsonLines, Format::Protobuf] {
            let mut ends = Vec::new();
            let mut bytes = Vec::new();
            for r in &records {
                bytes.extend(written(format, std::slice::from_ref(r)));
                ends.push(bytes.len() as u64);
            }
            let mut reader = FlowReader::new(bytes.as_slice(), "test");
            assert_eq!(reader.position(), 0);
            for end in ends {
                reader.next().unwrap().unwrap();
                assert_eq!(reader.position(), end, "{format}");
            }
        }
    }

    #[test]
    fn a_cut_record_is_truncated_and_reading_again_goes_on() {
        let records = records();
        for format in [Format::JsonLines, Format::Protobuf] {
            let bytes = written(format, &records[..2]);
            let first_end = written(format, &records[..1]).len();
            // A writer has written the first record and part of the second.
            let cut = first_end + 20;
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), &bytes[..cut]).unwrap();
            let mut reader = FlowReader::new(
                BufReader::new(std::fs::File::open(file.path()).unwrap()),
                file.path().display().to_string(),
            );
            assert_eq!(reader.next().unwrap().unwrap(), records[0]);
            let err = reader.next().unwrap().unwrap_err();
            assert!(err.is_truncated(), "{format}: {err:?}");
            assert!(
                err.to_string().ends_with(&format!(
                    "record 2 at byte {first_end} is cut short by the end of the input"
                )),
                "{err}"
            );
            assert_eq!(reader.position(), first_end as u64);
            // Reported once: until more arrives, the reader is at the end.
            assert!(reader.next().is_none(), "{format}");

            // The writer finishes the record: the same reader goes on...
            std::fs::write(file.path(), &bytes).unwrap();
            assert_eq!(reader.next().unwrap().unwrap(), records[1], "{format}");
            assert!(reader.next().is_none());
            assert_eq!(reader.position(), bytes.len() as u64);

            // ...and so does a new reader resumed where the first one stopped.
            let mut file = std::fs::File::open(file.path()).unwrap();
            file.seek(SeekFrom::Start(first_end as u64)).unwrap();
            let mut resumed = FlowReader::resume(BufReader::new(file), "f", first_end as u64);
            assert_eq!(resumed.next().unwrap().unwrap(), records[1], "{format}");
            assert_eq!(resumed.format(), Some(format));
            assert_eq!(resumed.position(), bytes.len() as u64);
        }
    }

    #[test]
    fn a_last_json_line_without_a_newline_is_a_record() {
        let mut bytes = written(Format::JsonLines, &records()[..1]);
        bytes.pop();
        let mut reader = FlowReader::new(Cursor::new(bytes.clone()), "f");
        assert_eq!(reader.next().unwrap().unwrap(), records()[0]);
        assert!(reader.next().is_none());
        assert_eq!(reader.position(), bytes.len() as u64);
    }

    #[test]
    fn empty_and_blank_inputs_have_no_records() {
        for input in [&b""[..], b"\n\n  \n"] {
            let mut reader = FlowReader::new(input, "f");
            assert!(reader.next().is_none());
            assert_eq!(reader.format(), None);
        }
        // A lone brace may be the start of either: cut short.
        let mut reader = FlowReader::new(&b"{"[..], "f");
        assert!(reader.next().unwrap().unwrap_err().is_truncated());
        assert!(reader.next().is_none());
    }

    #[test]
    fn blank_lines_between_json_records_count_as_lines() {
        let mut bytes = b"\n".to_vec();
        bytes.extend(written(Format::JsonLines, &records()[..1]));
        bytes.extend(b"\n\n{\"bad\":1}\n");
        let mut reader = FlowReader::new(bytes.as_slice(), "f");
        assert!(reader.next().unwrap().is_ok());
        let err = reader.next().unwrap().unwrap_err();
        assert!(
            matches!(
                err,
                ReadError::Json {
                    line: 5,
                    record: 2,
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
