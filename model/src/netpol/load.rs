//! Policy files -> [`NetworkPolicy`] objects, checked as `kubectl apply --validate=strict`
//! and the API server would check them, with errors that name the file, document, line and
//! field.
//!
//! # What a file holds
//! A YAML file holds any number of documents separated by `---`; a `.json` file holds one
//! JSON value. Empty documents (nothing, only comments, or `null`; an empty JSON file too)
//! are skipped. Every other document is a `networking.k8s.io/v1` `NetworkPolicy`, or a list
//! of them as `kubectl get -o yaml` writes it: `apiVersion: v1`, `kind: List` (each item
//! states its `apiVersion` and `kind`), or `networking.k8s.io/v1` `NetworkPolicyList` (items
//! may leave them out). A policy without `metadata.namespace` is in `default`, as with
//! `kubectl apply` in the default context; the returned policy says so.
//!
//! # Numbering
//! [`Loaded::document`] and [`LoadError::document`] count the file's objects from 1, in
//! order: a policy document is one, a list is one per item (its first item takes the number
//! the list would have had; the document after the list continues after its last item), an
//! empty document is none. So "document 3" is the third policy of the file, however it is
//! written; the line says where it is.
//!
//! # Lines
//! [`Loaded::line`] is where the object starts: its first key, or for a list item its `-`
//! (known for the block style `kubectl` writes; not for list items in JSON).
//! [`LoadError::line`] is the line of the field at fault when it can be found (of its
//! nearest enclosing field when the field is missing), else where the object starts.
//!
//! # Errors
//! Loading stops at the first document in error. Unknown fields, type errors and YAML or
//! JSON syntax errors are reported one at a time (the first of several unknown fields is the
//! error, and the message names the others). A policy the API server would refuse (see
//! [`super::validate`]) is reported with its first error's field and line, and every other
//! error joined to the message: `<message>; also <field>: <message>; also ...`.

use std::{
    collections::HashMap,
    fmt::{self, Write as _},
    fs,
    path::{Path, PathBuf},
};

use k8s_openapi::{
    api::networking::v1::NetworkPolicy, apimachinery::pkg::apis::meta::v1::ListMeta,
};
use serde::{
    Deserialize,
    de::{self, DeserializeOwned, DeserializeSeed, IgnoredAny, Visitor},
};
use serde_yaml::Value;

use super::validate::{FieldError, validate};

/// One NetworkPolicy read from a file, and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    /// The file, as given to [`load_str`], [`load_file`] or found by [`load_dir`].
    pub file: PathBuf,
    /// 1-based number of the object in the file: documents and list items counted in
    /// order, empty documents not counted (see the module docs).
    pub document: usize,
    /// 1-based line where the document (or list item) starts, when known.
    pub line: Option<usize>,
    /// The policy, with `metadata.namespace` filled in (`default` when the file has none).
    pub policy: NetworkPolicy,
}

/// Why a policy file could not be loaded, and where. Displayed as
///
/// ```text
/// policies/web.yaml: document 2 (line 14): spec.ingress[0].from[1].ipBlock.except[0]: must be a strict subset of `cidr` 10.0.0.0/8
/// ```
///
/// leaving out what is not known.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.describe())]
pub struct LoadError {
    /// The file (or, when it cannot be listed, the folder).
    pub file: PathBuf,
    /// The object in error, numbered as [`Loaded::document`]; `None` for the whole file.
    pub document: Option<usize>,
    /// 1-based line of the field at fault, or else of the object.
    pub line: Option<usize>,
    /// The field at fault, like `spec.ingress[0].ports[1].port`.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl LoadError {
    fn describe(&self) -> String {
        let place = match (self.document, self.line) {
            (Some(document), Some(line)) => format!(" document {document} (line {line}):"),
            (Some(document), None) => format!(" document {document}:"),
            (None, Some(line)) => format!(" line {line}:"),
            (None, None) => String::new(),
        };
        let field = self.field.as_ref().map(|field| format!(" {field}:"));
        let field = field.unwrap_or_default();
        format!("{}:{place}{field} {}", self.file.display(), self.message)
    }

    /// An error about the whole file (or directory).
    fn whole(file: &Path, message: String) -> Self {
        Self {
            file: file.to_owned(),
            document: None,
            line: None,
            field: None,
            message,
        }
    }
}

/// Reads the policies in `text`, which came from `file`: JSON when `file` ends in `.json`,
/// YAML otherwise. `file` is also what errors and [`Loaded::file`] name.
pub fn load_str(text: &str, file: &Path) -> Result<Vec<Loaded>, LoadError> {
    let source = Source::new(text, file);
    let mut loaded = Vec::new();
    for document in source.documents() {
        source.load_document(document, &mut loaded)?;
    }
    check_unique(&loaded)?;
    Ok(loaded)
}

/// Reads the policies in the file at `path` (see [`load_str`]).
pub fn load_file(path: &Path) -> Result<Vec<Loaded>, LoadError> {
    let text = fs::read_to_string(path)
        .map_err(|e| LoadError::whole(path, format!("cannot read the file: {e}")))?;
    load_str(&text, path)
}

/// Every *.yaml, *.yml, *.json file directly in `dir` (not recursive; names starting with '.'
/// ignored — editors' temp files), in file-name order. The same namespace/name defined
/// twice (in one or two files) is an error naming both places.
///
/// Symbolic links are followed, so a ConfigMap mounted as a volume (each key a link into
/// its hidden `..data` folder) reads as its keys.
pub fn load_dir(dir: &Path) -> Result<Vec<Loaded>, LoadError> {
    let mut loaded = Vec::new();
    for file in policy_files(dir)? {
        loaded.extend(load_file(&file)?);
    }
    check_unique(&loaded)?;
    Ok(loaded)
}

const API_VERSION: &str = "networking.k8s.io/v1";
const KIND: &str = "NetworkPolicy";
const LIST_KIND: &str = "NetworkPolicyList";
const DEFAULT_NAMESPACE: &str = "default";
const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// Is `path` named like a policy file of a folder: `*.yaml`, `*.yml` or `*.json`, not
/// hidden (editors' and tools' temporary files start with a dot)?
pub fn is_policy_file(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .is_none_or(|name| name.as_encoded_bytes().starts_with(b"."));
    let wanted = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e));
    !hidden && wanted
}

fn policy_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let cannot = |e: std::io::Error| LoadError::whole(dir, format!("cannot list the folder: {e}"));
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(cannot)? {
        let path = entry.map_err(cannot)?.path();
        if !is_policy_file(&path) {
            continue;
        }
        let metadata = fs::metadata(&path)
            .map_err(|e| LoadError::whole(&path, format!("cannot read the file: {e}")))?;
        if metadata.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Fails on the second definition of a namespace/name, naming the first.
fn check_unique(loaded: &[Loaded]) -> Result<(), LoadError> {
    let mut seen: HashMap<(&str, &str), &Loaded> = HashMap::new();
    for this in loaded {
        let meta = &this.policy.metadata;
        let key = (
            meta.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE),
            meta.name.as_deref().unwrap_or_default(),
        );
        if let Some(first) = seen.insert(key, this) {
            return Err(LoadError {
                file: this.file.clone(),
                document: Some(this.document),
                line: this.line,
                field: Some("metadata.name".to_owned()),
                message: format!(
                    "NetworkPolicy {}/{} is defined twice: first in {}",
                    key.0,
                    key.1,
                    place(first)
                ),
            });
        }
    }
    Ok(())
}

fn place(loaded: &Loaded) -> String {
    let mut text = format!("{} document {}", loaded.file.display(), loaded.document);
    if let Some(line) = loaded.line {
        _ = write!(text, " (line {line})");
    }
    text
}

/// One step of a field path: a mapping key or a sequence index.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// A path written as Kubernetes writes it: `spec.ingress[0].from`; a key that is not a
/// plain name is written `[key]`.
fn render(path: &[Step]) -> String {
    let mut text = String::new();
    for step in path {
        match step {
            Step::Key(key) if is_plain_key(key) => {
                if !text.is_empty() {
                    text.push('.');
                }
                text.push_str(key);
            }
            Step::Key(key) => _ = write!(text, "[{key}]"),
            Step::Index(index) => _ = write!(text, "[{index}]"),
        }
    }
    text
}

fn is_plain_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Reads back a path written by [`render`] or by [`super::validate`].
fn parse_path(field: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut rest = field;
    while !rest.is_empty() {
        if let Some(inner) = rest.strip_prefix('[') {
            let Some(end) = inner.find(']') else { break };
            let content = &inner[..end];
            let step = content
                .parse()
                .map_or_else(|_| Step::Key(content.to_owned()), Step::Index);
            steps.push(step);
            rest = &inner[end + 1..];
        } else if let Some(after_dot) = rest.strip_prefix('.') {
            rest = after_dot;
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            steps.push(Step::Key(rest[..end].to_owned()));
            rest = &rest[end..];
        }
    }
    steps
}

/// The path serde_path_to_error tracked, up to where it lost track (a syntax error, say).
fn steps_of_tracked(path: &serde_path_to_error::Path) -> Vec<Step> {
    use serde_path_to_error::Segment;
    path.iter()
        .map_while(|segment| match segment {
            Segment::Seq { index } => Some(Step::Index(*index)),
            Segment::Map { key } => Some(Step::Key(key.clone())),
            Segment::Enum { variant } => Some(Step::Key(variant.clone())),
            Segment::Unknown => None,
        })
        .collect()
}

fn steps_of_ignored(path: &serde_ignored::Path<'_>, steps: &mut Vec<Step>) {
    use serde_ignored::Path;
    match path {
        Path::Root => {}
        Path::Seq { parent, index } => {
            steps_of_ignored(parent, steps);
            steps.push(Step::Index(*index));
        }
        Path::Map { parent, key } => {
            steps_of_ignored(parent, steps);
            steps.push(Step::Key(key.clone()));
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => {
            steps_of_ignored(parent, steps);
        }
    }
}

/// Something wrong in one document, before it is placed in the file.
#[derive(Clone, Debug)]
struct Problem {
    /// As shown; `None` for the object as a whole.
    field: Option<String>,
    /// The same field, to find its line with.
    path: Vec<Step>,
    message: String,
    /// When the parser said where.
    line: Option<usize>,
}

impl Problem {
    fn at(path: Vec<Step>, message: impl Into<String>) -> Self {
        Self {
            field: (!path.is_empty()).then(|| render(&path)),
            path,
            message: message.into(),
            line: None,
        }
    }

    fn at_key(key: &str, message: impl Into<String>) -> Self {
        Self::at(vec![Step::Key(key.to_owned())], message)
    }

    /// The first error names the field; the others join the message.
    fn from_field_errors(errors: &[FieldError]) -> Option<Self> {
        let (first, others) = errors.split_first()?;
        let mut message = first.message.clone();
        for other in others {
            _ = write!(message, "; also {other}");
        }
        Some(Self {
            field: Some(first.field.clone()),
            path: parse_path(&first.field),
            message,
            line: None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Syntax {
    Yaml,
    Json,
}

/// One document of the file, parsed into a plain value.
struct Document {
    /// Position among all the file's documents, empty ones included (to parse it again).
    index: usize,
    /// 1-based line and column where its content starts.
    start: Option<(usize, usize)>,
    /// Where the next document's content starts: this one ends before.
    end: Option<usize>,
    value: Result<Value, Problem>,
}

/// A list as `kubectl get -o yaml` writes it (`apiVersion` and `kind` are checked before).
#[derive(Deserialize)]
struct List {
    #[serde(rename = "apiVersion")]
    _api_version: String,
    #[serde(rename = "kind")]
    _kind: String,
    #[serde(default, rename = "metadata")]
    _metadata: Option<ListMeta>,
    #[serde(default)]
    items: Option<Vec<Value>>,
}

/// What a document (or list item) holds, by its `apiVersion` and `kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Policy,
    List,
}

/// The text of one file and how to read it.
struct Source<'a> {
    text: &'a str,
    file: &'a Path,
    syntax: Syntax,
}

impl<'a> Source<'a> {
    fn new(text: &'a str, file: &'a Path) -> Self {
        let is_json = file.extension().is_some_and(|e| e == "json");
        Self {
            // serde_json does not skip a byte order mark; libyaml does, but lines are the same.
            text: text.strip_prefix('\u{feff}').unwrap_or(text),
            file,
            syntax: if is_json { Syntax::Json } else { Syntax::Yaml },
        }
    }

    fn documents(&self) -> Vec<Document> {
        match self.syntax {
            Syntax::Yaml => self.yaml_documents(),
            Syntax::Json => self.json_document().into_iter().collect(),
        }
    }

    fn yaml_documents(&self) -> Vec<Document> {
        // Parsing gives no positions, only errors do: one walk that stops at once at each
        // document's root finds where every document starts. serde_yaml's documents never
        // end after a syntax error: both loops stop at the first document in error.
        let starts: Vec<_> = serde_yaml::Deserializer::from_str(self.text)
            .map_while(|document| yaml_found_at(Walk::to(&[]).deserialize(document)))
            .collect();
        let mut documents = Vec::new();
        for (index, document) in serde_yaml::Deserializer::from_str(self.text).enumerate() {
            let value = serde_path_to_error::deserialize(document)
                .map_err(yaml_problem)
                .and_then(merge_keys);
            let failed = value.is_err();
            documents.push(Document {
                index,
                start: starts.get(index).copied(),
                end: starts.get(index + 1).map(|(line, _)| *line),
                value,
            });
            if failed {
                break;
            }
        }
        documents
    }

    fn json_document(&self) -> Option<Document> {
        if self.text.trim().is_empty() {
            return None;
        }
        let mut deserializer = serde_json::Deserializer::from_str(self.text);
        let start = json_found_at(Walk::to(&[]).deserialize(&mut deserializer));
        Some(Document {
            index: 0,
            start,
            end: None,
            value: json_value(self.text),
        })
    }

    /// Adds the document's policies to `loaded` (numbered after those already there).
    fn load_document(&self, document: Document, loaded: &mut Vec<Loaded>) -> Result<(), LoadError> {
        let number = loaded.len() + 1;
        let line = document.start.map(|(line, _)| line);
        let fail = |problem| self.error(&document, number, &[], line, problem);
        let value = match &document.value {
            Ok(Value::Null) => return Ok(()),
            Ok(value) => value,
            Err(problem) => return Err(fail(problem.clone())),
        };
        match shape(value, true).map_err(fail)? {
            Shape::Policy => loaded.push(self.load_policy(&document, number, value, &[], line)?),
            Shape::List => self.load_list(&document, value, loaded)?,
        }
        Ok(())
    }

    fn load_list(
        &self,
        document: &Document,
        value: &Value,
        loaded: &mut Vec<Loaded>,
    ) -> Result<(), LoadError> {
        let number = loaded.len() + 1;
        let line = document.start.map(|(line, _)| line);
        let list: List = parse(value, &["apiVersion", "kind", "metadata", "items"])
            .map_err(|problem| self.error(document, number, &[], line, problem))?;
        let items = list.items.unwrap_or_default();
        let lines = self.item_lines(document, items.len());
        let in_typed_list = value.get("kind").and_then(Value::as_str) == Some(LIST_KIND);
        for (i, item) in items.iter().enumerate() {
            let number = loaded.len() + 1;
            let at = [Step::Key("items".to_owned()), Step::Index(i)];
            let line = lines.as_ref().and_then(|lines| lines.get(i).copied());
            match shape(item, !in_typed_list) {
                Ok(Shape::Policy) => {}
                Ok(Shape::List) => {
                    let problem = Problem::at_key("kind", "a list inside a list is not supported");
                    return Err(self.error(document, number, &at, line, problem));
                }
                Err(problem) => return Err(self.error(document, number, &at, line, problem)),
            }
            loaded.push(self.load_policy(document, number, item, &at, line)?);
        }
        Ok(())
    }

    /// Parses, completes and validates one policy found at `at` in `document`.
    fn load_policy(
        &self,
        document: &Document,
        number: usize,
        value: &Value,
        at: &[Step],
        line: Option<usize>,
    ) -> Result<Loaded, LoadError> {
        let fail = |problem| self.error(document, number, at, line, problem);
        let mut policy: NetworkPolicy =
            parse(value, &["apiVersion", "kind", "metadata", "spec"]).map_err(fail)?;
        if policy
            .metadata
            .namespace
            .as_deref()
            .is_none_or(str::is_empty)
        {
            policy.metadata.namespace = Some(DEFAULT_NAMESPACE.to_owned());
        }
        if let Some(problem) = Problem::from_field_errors(&validate(&policy)) {
            return Err(fail(problem));
        }
        Ok(Loaded {
            file: self.file.to_owned(),
            document: number,
            line,
            policy,
        })
    }

    /// Places `problem`, found in the object at `at` of `document`, in the file.
    fn error(
        &self,
        document: &Document,
        number: usize,
        at: &[Step],
        object_line: Option<usize>,
        problem: Problem,
    ) -> LoadError {
        let line = problem
            .line
            .or_else(|| self.locate(document.index, &[at, &problem.path].concat()))
            .or(object_line);
        LoadError {
            file: self.file.to_owned(),
            document: Some(number),
            line,
            field: problem.field,
            message: problem.message,
        }
    }

    /// The line of `path` in document `index`, or of the longest part of it that exists.
    fn locate(&self, index: usize, path: &[Step]) -> Option<usize> {
        (1..=path.len())
            .rev()
            .find_map(|len| self.walk(index, &path[..len]))
    }

    fn walk(&self, index: usize, path: &[Step]) -> Option<usize> {
        match self.syntax {
            Syntax::Yaml => {
                let document = serde_yaml::Deserializer::from_str(self.text).nth(index)?;
                yaml_found_at(Walk::to(path).deserialize(document)).map(|(line, _)| line)
            }
            Syntax::Json => {
                let mut deserializer = serde_json::Deserializer::from_str(self.text);
                json_found_at(Walk::to(path).deserialize(&mut deserializer)).map(|(line, _)| line)
            }
        }
    }

    /// Where each item of a list starts, for the block style `kubectl get -o yaml` writes:
    /// the `-` lines of the `items:` sequence of the document's root. `None` unless exactly
    /// `count` are found (a flow-style or JSON list, say).
    fn item_lines(&self, document: &Document, count: usize) -> Option<Vec<usize>> {
        if self.syntax != Syntax::Yaml || count == 0 {
            return None;
        }
        let (start, column) = document.start?;
        let root_indent = column.saturating_sub(1);
        let mut lines = self
            .text
            .lines()
            .enumerate()
            .map(|(i, text)| (i + 1, text))
            .skip(start.saturating_sub(1))
            .take_while(|(n, _)| document.end.is_none_or(|end| *n < end));
        lines
            .by_ref()
            .find(|(_, text)| indent(text) == root_indent && is_items_key(&text[root_indent..]))?;
        let mut found = Vec::new();
        let mut item_indent = None;
        for (n, text) in lines {
            let content = text.trim_start();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let this_indent = text.len() - content.len();
            let is_item = content == "-" || content.starts_with("- ") || content.starts_with("-\t");
            match item_indent {
                None if is_item && this_indent >= root_indent => {
                    item_indent = Some(this_indent);
                    found.push(n);
                }
                Some(items) if is_item && this_indent == items => found.push(n),
                Some(_) if this_indent > root_indent => {}
                _ => break,
            }
        }
        (found.len() == count).then_some(found)
    }
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// `items:` with nothing after it but a comment.
fn is_items_key(text: &str) -> bool {
    text.strip_prefix("items:")
        .map(str::trim_start)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('#'))
}

/// Checks `apiVersion` and `kind`. `needs_type` is false for the items of a
/// `NetworkPolicyList`, which may leave them out.
fn shape(value: &Value, needs_type: bool) -> Result<Shape, Problem> {
    let Value::Mapping(map) = value else {
        return Err(Problem::at(
            Vec::new(),
            format!(
                "expected a Kubernetes object (a mapping with `apiVersion` and `kind`), found {}",
                describe(value)
            ),
        ));
    };
    let mut api_version = string_field(map, "apiVersion")?;
    let mut kind = string_field(map, "kind")?;
    if !needs_type {
        api_version = api_version.or(Some(API_VERSION));
        kind = kind.or(Some(KIND));
    }
    match (kind, api_version) {
        (Some(KIND), Some(API_VERSION)) => Ok(Shape::Policy),
        (Some(LIST_KIND), Some(API_VERSION)) | (Some("List"), Some("v1")) => Ok(Shape::List),
        (None, _) => Err(Problem::at_key(
            "kind",
            "is missing: expected `kind: NetworkPolicy` (or a `List` of them)",
        )),
        (Some(kind @ (KIND | LIST_KIND | "List")), api_version) => {
            let expected = if kind == "List" { "v1" } else { API_VERSION };
            let message = match api_version {
                None => format!("is missing: a {kind} needs `apiVersion: {expected}`"),
                Some(found) => {
                    format!("`{found}` is not supported for {kind}: expected `{expected}`")
                }
            };
            Err(Problem::at_key("apiVersion", message))
        }
        (Some(kind), api_version) => {
            let api_version = api_version.map(|v| format!(" ({v})")).unwrap_or_default();
            Err(Problem::at_key(
                "kind",
                format!(
                    "`{kind}`{api_version} is not a NetworkPolicy: only `{API_VERSION}` \
                     NetworkPolicy objects, or a List of them, can be loaded"
                ),
            ))
        }
    }
}

fn string_field<'v>(map: &'v serde_yaml::Mapping, key: &str) -> Result<Option<&'v str>, Problem> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(other) => Err(Problem::at_key(
            key,
            format!("must be a string, found {}", describe(other)),
        )),
    }
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a sequence",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// `value` as a `T`, refusing fields `T` does not know (as `kubectl apply --validate=strict`
/// does). `fields` are the root's fields, to suggest one for a misspelt root field.
fn parse<T: DeserializeOwned>(value: &Value, fields: &[&str]) -> Result<T, Problem> {
    let mut unknown = Vec::new();
    let parsed = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(
        value,
        &mut |path: serde_ignored::Path<'_>| {
            let mut steps = Vec::new();
            steps_of_ignored(&path, &mut steps);
            unknown.push(steps);
        },
    ));
    let parsed: T = parsed.map_err(|e| {
        let message = e
            .inner()
            .to_string()
            .replace("expected IntOrString", "expected a port number or name");
        Problem::at(steps_of_tracked(e.path()), message)
    })?;
    match unknown.split_first() {
        None => Ok(parsed),
        Some((first, others)) => Err(unknown_field(first, others, fields)),
    }
}

fn unknown_field(first: &[Step], others: &[Vec<Step>], root_fields: &[&str]) -> Problem {
    let name = match first.last() {
        Some(Step::Key(key)) => key.as_str(),
        _ => "?",
    };
    let parent = &first[..first.len().saturating_sub(1)];
    let known = if parent.is_empty() {
        root_fields
    } else {
        known_fields(parent)
    };
    let mut message = format!("unknown field `{name}`");
    if let Some(suggestion) = closest(name, known) {
        _ = write!(message, " (did you mean `{suggestion}`?)");
    }
    if !others.is_empty() {
        let others: Vec<_> = others.iter().map(|path| render(path)).collect();
        _ = write!(message, "; also unknown: {}", others.join(", "));
    }
    Problem::at(first.to_vec(), message)
}

/// The fields of the NetworkPolicy type found under `parent` (named by its last key), for
/// "did you mean".
fn known_fields(parent: &[Step]) -> &'static [&'static str] {
    let last_key = parent.iter().rev().find_map(|step| match step {
        Step::Key(key) => Some(key.as_str()),
        Step::Index(_) => None,
    });
    match last_key {
        Some("spec") => &["podSelector", "policyTypes", "ingress", "egress"],
        Some("ingress") => &["from", "ports"],
        Some("egress") => &["to", "ports"],
        Some("from" | "to") => &["podSelector", "namespaceSelector", "ipBlock"],
        Some("ipBlock") => &["cidr", "except"],
        Some("ports") => &["protocol", "port", "endPort"],
        Some("podSelector" | "namespaceSelector") => &["matchLabels", "matchExpressions"],
        Some("matchExpressions") => &["key", "operator", "values"],
        Some("metadata") => &[
            "name",
            "namespace",
            "labels",
            "annotations",
            "generateName",
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "ownerReferences",
            "finalizers",
            "managedFields",
            "selfLink",
        ],
        _ => &[],
    }
}

/// The known field `name` most likely meant: the same but for case, or at most two edits away.
fn closest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    let lower = name.to_lowercase();
    known
        .iter()
        .map(|field| (edit_distance(&lower, &field.to_lowercase()), *field))
        .filter(|(distance, _)| *distance <= 2.min(name.len() / 3 + 1))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, field)| field)
}

/// Levenshtein distance, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let replace = previous[j] + usize::from(ca != *cb);
            current.push(replace.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

fn json_value(text: &str) -> Result<Value, Problem> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = steps_of_tracked(e.path());
        json_problem(path, e.inner())
    })?;
    deserializer
        .end()
        .map_err(|e| json_problem(Vec::new(), &e))?;
    Ok(value)
}

fn json_problem(path: Vec<Step>, error: &serde_json::Error) -> Problem {
    let at = format!(" at line {} column {}", error.line(), error.column());
    let message = error.to_string().replacen(&at, "", 1);
    let message = if message == "trailing characters" {
        "a JSON file holds one value: found more after it".to_owned()
    } else {
        message
    };
    Problem {
        line: (error.line() > 0).then_some(error.line()),
        ..Problem::at(path, message)
    }
}

/// Applies `<<: *anchor` merge keys, as `kubectl` does.
fn merge_keys(mut value: Value) -> Result<Value, Problem> {
    match value.apply_merge() {
        Ok(()) => Ok(value),
        Err(e) => Err(Problem::at(Vec::new(), e.to_string())),
    }
}

fn yaml_problem(error: serde_path_to_error::Error<serde_yaml::Error>) -> Problem {
    let path = steps_of_tracked(error.path());
    let inner = error.inner();
    let location = inner.location().map(|l| (l.line(), l.column()));
    let mut message = inner.to_string();
    if let Some((line, column)) = location {
        message = message.replacen(&format!(" at line {line} column {column}"), "", 1);
    }
    // serde_yaml starts its messages with the path, which the error shows on its own.
    let prefix = format!("{}: ", render(&path));
    if let Some(rest) = message.strip_prefix(&prefix) {
        message = rest.to_owned();
    }
    Problem {
        line: location.map(|(line, _)| line),
        ..Problem::at(path, message)
    }
}

/// What [`Walk`] fails with where it arrives; the parser's error then carries the position.
const ARRIVED: &str = "palisade-netpol-load: arrived";

fn yaml_found_at(result: Result<(), serde_yaml::Error>) -> Option<(usize, usize)> {
    let error = result.err()?;
    let location = error.location()?;
    error
        .to_string()
        .contains(ARRIVED)
        .then(|| (location.line(), location.column()))
}

fn json_found_at(result: Result<(), serde_json::Error>) -> Option<(usize, usize)> {
    let error = result.err()?;
    (error.to_string().contains(ARRIVED) && error.line() > 0)
        .then(|| (error.line(), error.column()))
}

/// Walks a document down `rest` and fails there, with [`ARRIVED`], so that the parser
/// reports the position: serde gives positions with errors only. Stops at a mapping's key
/// (the line of `key:`), or at the start of a sequence item or of the root.
struct Walk<'p> {
    rest: &'p [Step],
}

impl<'p> Walk<'p> {
    fn to(path: &'p [Step]) -> Self {
        Self { rest: path }
    }

    fn leaf<E: de::Error>(&self) -> Result<(), E> {
        Err(if self.rest.is_empty() {
            arrived()
        } else {
            absent()
        })
    }
}

fn arrived<E: de::Error>() -> E {
    E::custom(ARRIVED)
}

fn absent<E: de::Error>() -> E {
    E::custom("palisade-netpol-load: no such field")
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((step, rest)) = self.rest.split_first() else {
            return Err(arrived());
        };
        let wanted = match step {
            Step::Key(key) => key.clone(),
            Step::Index(index) => index.to_string(),
        };
        let seed = || KeyIs {
            wanted: &wanted,
            stop: rest.is_empty(),
        };
        while let Some(hit) = map.next_key_seed(seed())? {
            if hit {
                return map.next_value_seed(Walk { rest });
            }
            map.next_value::<IgnoredAny>()?;
        }
        Err(absent())
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((step, rest)) = self.rest.split_first() else {
            return Err(arrived());
        };
        let Step::Index(index) = step else {
            return Err(absent());
        };
        for _ in 0..*index {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Err(absent());
            }
        }
        seq.next_element_seed(Walk { rest })?;
        Err(absent())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.leaf()
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.leaf()
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        self.leaf()
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.leaf()
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        self.leaf()
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.leaf()
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.leaf()
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.leaf()
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.leaf()
    }

    /// A tagged value (`!Tag value`).
    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        self.leaf()
    }
}

/// A mapping key: is it the one [`Walk`] wants? Fails with [`ARRIVED`] on it when `stop`.
struct KeyIs<'w> {
    wanted: &'w str,
    stop: bool,
}

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        match key == self.wanted {
            true if self.stop => Err(arrived()),
            hit => Ok(hit),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use proptest::prelude::*;

    use super::*;

    const YAML: &str = "policies/web.yaml";
    const JSON: &str = "policies/web.json";

    /// A policy document named `name` with more lines after its metadata.
    fn policy(name: &str, rest: &str) -> String {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n{rest}"
        )
    }

    fn load(text: &str) -> Vec<Loaded> {
        load_str(text, Path::new(YAML)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn fail(text: &str) -> LoadError {
        load_str(text, Path::new(YAML)).expect_err("loading should fail")
    }

    /// 1-based line of the first line of `text` that contains `needle`.
    fn line_of(text: &str, needle: &str) -> usize {
        text.lines()
            .position(|line| line.contains(needle))
            .unwrap_or_else(|| panic!("{needle:?} not in the text"))
            + 1
    }

    /// (document, line, namespace/name) of each loaded policy.
    fn summary(loaded: &[Loaded]) -> Vec<(usize, Option<usize>, String)> {
        loaded
            .iter()
            .map(|l| {
                let meta = &l.policy.metadata;
                let name = format!(
                    "{}/{}",
                    meta.namespace.as_deref().unwrap_or("?"),
                    meta.name.as_deref().unwrap_or("?")
                );
                (l.document, l.line, name)
            })
            .collect()
    }

    fn assert_error(error: &LoadError, document: usize, line: usize, field: Option<&str>) {
        assert_eq!(
            (error.document, error.line, error.field.as_deref()),
            (Some(document), Some(line), field),
            "{error}"
        );
    }

    #[test]
    fn one_policy() {
        let text = policy(
            "web",
            "  namespace: prod\nspec:\n  podSelector: {}\n  ingress:\n  - ports: [{port: 80}]\n",
        );
        let loaded = load(&text);
        assert_eq!(summary(&loaded), [(1, Some(1), "prod/web".to_owned())]);
        assert_eq!(loaded[0].file, Path::new(YAML));
        let spec = loaded[0].policy.spec.as_ref().expect("spec");
        let port = &spec.ingress.as_ref().expect("ingress")[0]
            .ports
            .as_ref()
            .expect("ports")[0];
        assert_eq!(port.port, Some(IntOrString::Int(80)));
    }

    #[test]
    fn a_policy_without_a_namespace_is_in_default() {
        let loaded = load(&policy("web", ""));
        assert_eq!(
            loaded[0].policy.metadata.namespace.as_deref(),
            Some("default")
        );
        let loaded = load(&policy("web", "  namespace: ''\n"));
        assert_eq!(
            loaded[0].policy.metadata.namespace.as_deref(),
            Some("default")
        );
    }

    #[test]
    fn several_documents_numbered_and_placed() {
        let text = format!(
            "# Policies of the web tier.\n---\n{}---\n# switched off for now\n---\n\n{}---\n{}...\n",
            policy("a", ""),
            policy("b", "  namespace: prod\n"),
            policy("c", "spec: {}\n"),
        );
        let loaded = load(&text);
        assert_eq!(
            summary(&loaded),
            [
                (1, Some(3), "default/a".to_owned()),
                (2, Some(11), "prod/b".to_owned()),
                (3, Some(17), "default/c".to_owned()),
            ]
        );
        assert_eq!(line_of(&text, "name: b"), 14);
        assert_eq!(line_of(&text, "name: c"), 20);
    }

    #[test]
    fn empty_files_and_documents_hold_nothing() {
        for text in [
            "",
            "\n\n",
            "# nothing yet\n",
            "---\n",
            "---\n---\n# x\n",
            "null\n",
            "---\n~\n",
        ] {
            assert_eq!(load(text), vec![], "{text:?}");
        }
        assert_eq!(load_str("", Path::new(JSON)).expect("empty JSON"), vec![]);
        assert_eq!(
            load_str(" \n", Path::new(JSON)).expect("blank JSON"),
            vec![]
        );
    }

    #[test]
    fn a_byte_order_mark_is_skipped() {
        let text = format!("\u{feff}{}", policy("web", ""));
        assert_eq!(
            summary(&load(&text)),
            [(1, Some(1), "default/web".to_owned())]
        );
        let json = "\u{feff}{\"apiVersion\": \"networking.k8s.io/v1\", \"kind\": \"NetworkPolicy\", \"metadata\": {\"name\": \"web\"}}";
        assert_eq!(load_str(json, Path::new(JSON)).expect("loads").len(), 1);
    }

    #[test]
    fn json_files() {
        let text = r#"{
  "apiVersion": "networking.k8s.io/v1",
  "kind": "NetworkPolicy",
  "metadata": {"name": "web", "namespace": "prod"},
  "spec": {"egress": [{"ports": [{"port": "dns", "protocol": "UDP"}]}]}
}
"#;
        let loaded = load_str(text, Path::new(JSON)).expect("loads");
        // JSON objects start, like YAML mappings, at their first key.
        assert_eq!(summary(&loaded), [(1, Some(2), "prod/web".to_owned())]);
        // The extension decides: the same text as .yaml is YAML (JSON is YAML too).
        assert_eq!(load(text).len(), 1);
    }

    #[test]
    fn json_errors_have_lines() {
        let text = "{\"apiVersion\": \"networking.k8s.io/v1\",\n \"kind\": \"NetworkPolicy\",\n \"metadata\": {\"name\": \"web\"},\n \"spec\": {\"ingress\": [{\"ports\": [{\"port\": 0}]}]}}\n";
        let error = load_str(text, Path::new(JSON)).expect_err("port 0");
        assert_error(&error, 1, 4, Some("spec.ingress[0].ports[0].port"));

        let error = load_str(
            "{\"kind\": \"NetworkPolicy\",\n \"spec\": {\"podSelector\": [1]}}",
            Path::new(JSON),
        )
        .expect_err("type error");
        assert_eq!(error.field.as_deref(), Some("apiVersion"));

        let error = load_str("{\"a\": 1,\n\"b\": }", Path::new(JSON)).expect_err("syntax");
        assert_eq!((error.document, error.line), (Some(1), Some(2)), "{error}");
        assert_eq!(error.field.as_deref(), Some("b"));
        assert!(error.message.starts_with("expected value"), "{error}");
        assert!(
            !error.message.contains("at line"),
            "the line is shown once: {error}"
        );

        let error = load_str("{\"a\": 1,\n", Path::new(JSON)).expect_err("eof");
        assert_eq!(error.field, None, "{error}");

        let error = load_str("{}\n{}\n", Path::new(JSON)).expect_err("two values");
        assert_eq!(error.line, Some(2), "{error}");
        assert!(
            error.message.contains("a JSON file holds one value"),
            "{error}"
        );
    }

    #[test]
    fn a_kubectl_list() {
        let text = "apiVersion: v1
items:
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata:
    name: a
    namespace: prod
  spec:
    ingress:
    - from:
      - podSelector: {}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata:
    name: b
    namespace: prod
kind: List
metadata:
  resourceVersion: \"\"
";
        let text = format!(
            "{}---\n{text}---\n{}",
            policy("first", ""),
            policy("last", "")
        );
        assert_eq!(
            summary(&load(&text)),
            [
                (1, Some(1), "default/first".to_owned()),
                (2, Some(line_of(&text, "- apiVersion")), "prod/a".to_owned()),
                (3, Some(line_of(&text, "name: b") - 3), "prod/b".to_owned()),
                (
                    4,
                    Some(line_of(&text, "name: last") - 3),
                    "default/last".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn what_the_api_server_adds_is_known() {
        let text = r#"apiVersion: v1
items:
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata:
    annotations:
      kubectl.kubernetes.io/last-applied-configuration: |
        {"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"annotations":{},"name":"web","namespace":"prod"}}
    creationTimestamp: "2026-11-28T09:00:00Z"
    generation: 3
    labels:
      app.kubernetes.io/managed-by: palisade
    managedFields:
    - apiVersion: networking.k8s.io/v1
      fieldsType: FieldsV1
      fieldsV1:
        f:spec:
          f:policyTypes: {}
      manager: kubectl-client-side-apply
      operation: Update
      time: "2026-11-28T09:00:00Z"
    name: web
    namespace: prod
    resourceVersion: "4711"
    uid: 0b9f6a56-3c1e-4c8e-9c53-5e0f3c1b7a11
  spec:
    podSelector:
      matchLabels:
        app: web
    policyTypes:
    - Ingress
kind: List
metadata:
  resourceVersion: ""
"#;
        let loaded = load(text);
        assert_eq!(summary(&loaded), [(1, Some(3), "prod/web".to_owned())]);
        assert_eq!(loaded[0].policy.metadata.generation, Some(3));
    }

    #[test]
    fn a_network_policy_list_whose_items_leave_out_their_type() {
        let text = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicyList
metadata: {resourceVersion: '12'}
items:
  - metadata: {name: a}
  - kind: NetworkPolicy
    metadata: {name: b}
";
        assert_eq!(
            summary(&load(text)),
            [
                (1, Some(5), "default/a".to_owned()),
                (2, Some(6), "default/b".to_owned())
            ]
        );
    }

    #[test]
    fn list_items_in_flow_style_or_json_have_no_line() {
        let text = "{apiVersion: v1, kind: List, items: [{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: a}}]}\n";
        assert_eq!(summary(&load(text)), [(1, None, "default/a".to_owned())]);
        let json = r#"{"apiVersion": "v1", "kind": "List", "items": [
  {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "a"}}]}"#;
        let loaded = load_str(json, Path::new(JSON)).expect("loads");
        assert_eq!(summary(&loaded), [(1, None, "default/a".to_owned())]);
    }

    #[test]
    fn an_empty_list_holds_nothing() {
        let text = format!(
            "apiVersion: v1\nitems: []\nkind: List\n---\n{}",
            policy("web", "")
        );
        assert_eq!(
            summary(&load(&text)),
            [(1, Some(5), "default/web".to_owned())]
        );
        assert_eq!(load("apiVersion: v1\nkind: List\n"), vec![]);
    }

    #[test]
    fn errors_in_list_items_name_the_item() {
        let text = "apiVersion: v1
kind: List
items:
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: a}
- apiVersion: v1
  kind: Service
  metadata: {name: b}
";
        let error = fail(text);
        assert_error(&error, 2, 8, Some("kind"));
        assert!(
            error
                .message
                .starts_with("`Service` (v1) is not a NetworkPolicy"),
            "{error}"
        );

        let text = "apiVersion: v1
kind: List
items:
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: a}
  spec:
    ingress:
    - ports:
      - port: 0
";
        let error = fail(text);
        assert_error(&error, 1, 10, Some("spec.ingress[0].ports[0].port"));

        let text = "apiVersion: v1\nkind: List\nitems:\n- 3\n";
        let error = fail(text);
        assert_error(&error, 1, 4, None);
        assert!(error.message.contains("found a number"), "{error}");

        let text =
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: List\n  items: []\n";
        let error = fail(text);
        assert_error(&error, 1, 5, Some("kind"));
        assert_eq!(error.message, "a list inside a list is not supported");
    }

    #[test]
    fn errors_in_the_list_itself() {
        let error = fail("apiVersion: v1\nkind: List\nitem: []\n");
        assert_error(&error, 1, 3, Some("item"));
        assert_eq!(
            error.message,
            "unknown field `item` (did you mean `items`?)"
        );

        let error = fail("apiVersion: v1\nkind: List\nitems: {}\n");
        assert_error(&error, 1, 3, Some("items"));
        assert!(
            error
                .message
                .starts_with("invalid type: map, expected a sequence"),
            "{error}"
        );

        let error = fail("apiVersion: networking.k8s.io/v1\nkind: List\nitems: []\n");
        assert_error(&error, 1, 1, Some("apiVersion"));
        assert_eq!(
            error.message,
            "`networking.k8s.io/v1` is not supported for List: expected `v1`"
        );
    }

    #[test]
    fn every_document_declares_a_network_policy() {
        let cases = [
            (
                "kind: NetworkPolicy\nmetadata: {name: a}\n",
                "apiVersion",
                1,
                "is missing: a NetworkPolicy needs `apiVersion: networking.k8s.io/v1`",
            ),
            (
                "apiVersion: networking.k8s.io/v1\nmetadata: {name: a}\n",
                "kind",
                1,
                "is missing: expected `kind: NetworkPolicy` (or a `List` of them)",
            ),
            (
                "apiVersion: networking.k8s.io/v1beta1\nkind: NetworkPolicy\n",
                "apiVersion",
                1,
                "`networking.k8s.io/v1beta1` is not supported for NetworkPolicy: expected `networking.k8s.io/v1`",
            ),
            (
                "apiVersion: v1\nkind: NetworkPolicyList\nitems: []\n",
                "apiVersion",
                1,
                "`v1` is not supported for NetworkPolicyList: expected `networking.k8s.io/v1`",
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\n",
                "kind",
                2,
                "`ConfigMap` (v1) is not a NetworkPolicy: only `networking.k8s.io/v1` NetworkPolicy objects, or a List of them, can be loaded",
            ),
            (
                "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n",
                "kind",
                2,
                "`CiliumNetworkPolicy` (cilium.io/v2) is not a NetworkPolicy: only `networking.k8s.io/v1` NetworkPolicy objects, or a List of them, can be loaded",
            ),
            (
                "apiVersion: networking.k8s.io/v1\nkind: [NetworkPolicy]\n",
                "kind",
                2,
                "must be a string, found a sequence",
            ),
        ];
        for (text, field, line, message) in cases {
            let error = fail(text);
            assert_error(&error, 1, line, Some(field));
            assert_eq!(error.message, message);
        }
    }

    #[test]
    fn a_document_is_an_object() {
        for (text, found) in [
            ("- a\n- b\n", "a sequence"),
            ("just words\n", "a string"),
            ("!Policy {}\n", "a tagged value"),
        ] {
            let error = fail(text);
            assert_error(&error, 1, 1, None);
            assert_eq!(
                error.message,
                format!(
                    "expected a Kubernetes object (a mapping with `apiVersion` and `kind`), found {found}"
                )
            );
        }
    }

    #[test]
    fn the_document_number_counts_objects_before_the_error() {
        let text = format!(
            "{}---\n{}---\napiVersion: v1\nkind: Secret\n",
            policy("a", ""),
            policy("b", "")
        );
        let error = fail(&text);
        assert_error(&error, 3, line_of(&text, "kind: Secret"), Some("kind"));
    }

    #[test]
    fn unknown_fields_are_errors() {
        let cases = [
            (
                "spec:\n  ingres: []\n",
                "spec.ingres",
                "ingres:",
                "unknown field `ingres` (did you mean `ingress`?)",
            ),
            (
                "spec:\n  ingress:\n  - form: []\n",
                "spec.ingress[0].form",
                "form:",
                "unknown field `form` (did you mean `from`?)",
            ),
            (
                "spec:\n  podselector: {}\n",
                "spec.podselector",
                "podselector:",
                "unknown field `podselector` (did you mean `podSelector`?)",
            ),
            (
                "spec:\n  egress:\n  - to:\n    - ipBlock: {cidr: 10.0.0.0/8, exept: []}\n",
                "spec.egress[0].to[0].ipBlock.exept",
                "exept",
                "unknown field `exept` (did you mean `except`?)",
            ),
            (
                "spec:\n  egress:\n  - ports:\n    - {port: 80, end_port: 90}\n",
                "spec.egress[0].ports[0].end_port",
                "end_port",
                "unknown field `end_port` (did you mean `endPort`?)",
            ),
            (
                "spec:\n  podSelector:\n    matchLabel: {a: b}\n",
                "spec.podSelector.matchLabel",
                "matchLabel:",
                "unknown field `matchLabel` (did you mean `matchLabels`?)",
            ),
            (
                "  lables: {a: b}\n",
                "metadata.lables",
                "lables:",
                "unknown field `lables` (did you mean `labels`?)",
            ),
            (
                "specs: {}\n",
                "specs",
                "specs:",
                "unknown field `specs` (did you mean `spec`?)",
            ),
            (
                "status: {}\n",
                "status",
                "status:",
                "unknown field `status`",
            ),
            (
                "spec:\n  somethingElse: 1\n",
                "spec.somethingElse",
                "somethingElse",
                "unknown field `somethingElse`",
            ),
        ];
        for (rest, field, needle, message) in cases {
            let text = policy("web", rest);
            let error = fail(&text);
            assert_error(&error, 1, line_of(&text, needle), Some(field));
            assert_eq!(error.message, message);
        }
    }

    #[test]
    fn several_unknown_fields_are_named_together() {
        let text = policy(
            "web",
            "spec:\n  ingres: []\n  egres: []\n  ingress:\n  - form: []\n",
        );
        let error = fail(&text);
        assert_error(&error, 1, line_of(&text, "ingres:"), Some("spec.ingres"));
        assert_eq!(
            error.message,
            "unknown field `ingres` (did you mean `ingress`?); also unknown: spec.egres, spec.ingress[0].form"
        );
    }

    #[test]
    fn type_errors_name_the_field_and_line() {
        let cases = [
            (
                "spec:\n  ingress:\n  - ports:\n    - port: [1]\n",
                "spec.ingress[0].ports[0].port",
                "port: [1]",
                "invalid type: sequence, expected a port number or name",
            ),
            (
                "spec:\n  egress:\n  - ports:\n    - {port: 80, endPort: x}\n",
                "spec.egress[0].ports[0].endPort",
                "endPort",
                "invalid type: string \"x\", expected i32",
            ),
            (
                "spec:\n  policyTypes: Ingress\n",
                "spec.policyTypes",
                "policyTypes",
                "invalid type: string \"Ingress\", expected a sequence",
            ),
            (
                "spec:\n  ingress: {}\n",
                "spec.ingress",
                "ingress:",
                "invalid type: map, expected a sequence",
            ),
            (
                "  labels: [a]\n",
                "metadata.labels",
                "labels",
                "invalid type: sequence, expected a map",
            ),
        ];
        for (rest, field, needle, message) in cases {
            let text = policy("web", rest);
            let error = fail(&text);
            assert_error(&error, 1, line_of(&text, needle), Some(field));
            assert_eq!(error.message, message);
        }
    }

    #[test]
    fn yaml_syntax_errors() {
        let text = format!(
            "{}---\nmetadata:\n  name: [a\n  namespace: b\n",
            policy("a", "")
        );
        let error = fail(&text);
        assert_eq!(
            (error.document, error.line),
            (Some(2), Some(line_of(&text, "namespace: b"))),
            "{error}"
        );
        assert!(
            error.message.contains("did not find expected ',' or ']'"),
            "{error}"
        );

        let text = "a: b\n c: d\n";
        let error = fail(text);
        assert_eq!((error.document, error.line), (Some(1), Some(2)), "{error}");
        assert_eq!(error.field, None);
    }

    #[test]
    fn anchors_aliases_and_merge_keys() {
        let text = policy(
            "web",
            "  labels: &labels {app: web}
spec:
  podSelector:
    matchLabels: {<<: *labels, tier: front}
  ingress:
  - ports: &ports [{port: 80}]
  egress:
  - ports: *ports
",
        );
        let loaded = load(&text);
        let spec = loaded[0].policy.spec.as_ref().expect("spec");
        let selector = spec
            .pod_selector
            .as_ref()
            .and_then(|s| s.match_labels.as_ref());
        let labels: Vec<_> = selector
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(labels, ["app=web", "tier=front"]);
        let egress = &spec.egress.as_ref().expect("egress")[0];
        assert_eq!(
            egress.ports,
            spec.ingress.as_ref().expect("ingress")[0].ports
        );

        let error = fail(&policy("web", "spec:\n  podSelector: {<<: 1}\n"));
        assert_error(&error, 1, 1, None);
        assert!(error.message.contains("merging"), "{error}");
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let text = policy("a", "  name: b\n");
        let error = fail(&text);
        assert_eq!(error.field.as_deref(), Some("metadata"));
        assert_eq!(error.message, "duplicate entry with key \"name\"");
        assert_eq!(error.line, Some(4));
    }

    #[test]
    fn policies_the_api_server_would_refuse() {
        let text = policy(
            "web",
            "spec:
  ingress:
  - from:
    - podSelector: {}
    - ipBlock:
        cidr: 10.0.0.0/8
        except:
        - 11.0.0.0/16
",
        );
        let error = fail(&text);
        assert_error(
            &error,
            1,
            line_of(&text, "11.0.0.0/16"),
            Some("spec.ingress[0].from[1].ipBlock.except[0]"),
        );
        assert_eq!(
            error.message,
            "must be a strict subset of `cidr` 10.0.0.0/8"
        );
    }

    #[test]
    fn the_error_reads_as_the_brief_shows() {
        let second = policy(
            "web",
            "spec:
  ingress:
  - from:
    - podSelector: {}
    - ipBlock: {cidr: 10.0.0.0/8, except: [192.168.0.0/16]}
",
        );
        let text = format!("{}---\n{second}", policy("api", ""));
        assert_eq!(line_of(&text, "192.168"), 14);
        assert_eq!(
            fail(&text).to_string(),
            "policies/web.yaml: document 2 (line 14): spec.ingress[0].from[1].ipBlock.except[0]: must be a strict subset of `cidr` 10.0.0.0/8"
        );
    }

    #[test]
    fn all_validation_errors_are_in_the_message() {
        let text = policy(
            "Web",
            "spec:\n  egress:\n  - ports:\n    - {port: 80, endPort: 70}\n",
        );
        let error = fail(&text);
        assert_error(
            &error,
            1,
            line_of(&text, "name: Web"),
            Some("metadata.name"),
        );
        assert!(
            error
                .message
                .starts_with("invalid value \"Web\": a lowercase RFC 1123 subdomain"),
            "{error}"
        );
        assert!(
            error.message.ends_with("; also spec.egress[0].ports[0].endPort: must be greater than or equal to `port` (80)"),
            "{error}"
        );
    }

    #[test]
    fn a_missing_field_is_placed_at_its_parent() {
        let text =
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  namespace: prod\n";
        let error = fail(text);
        assert_error(&error, 1, 3, Some("metadata.name"));
        assert_eq!(error.message, "is required");
        // No metadata at all: the object's own line.
        let text = "---\n\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n";
        assert_error(&fail(text), 1, 3, Some("metadata.name"));
    }

    #[test]
    fn label_keys_with_dots_are_found() {
        let text = policy(
            "web",
            "spec:\n  podSelector:\n    matchLabels:\n      app: web\n      app.kubernetes.io/name: -web\n",
        );
        let error = fail(&text);
        assert_error(
            &error,
            1,
            line_of(&text, "app.kubernetes.io/name"),
            Some("spec.podSelector.matchLabels[app.kubernetes.io/name]"),
        );
    }

    #[test]
    fn the_same_policy_twice_in_a_file() {
        let text = format!(
            "{}---\n{}",
            policy("web", "  namespace: prod\n"),
            policy("web", "  namespace: prod\n")
        );
        let error = fail(&text);
        assert_error(&error, 2, 7, Some("metadata.name"));
        assert_eq!(
            error.message,
            "NetworkPolicy prod/web is defined twice: first in policies/web.yaml document 1 (line 1)"
        );
        // `default` written out or left out is the same namespace.
        let text = format!(
            "{}---\n{}",
            policy("web", ""),
            policy("web", "  namespace: default\n")
        );
        assert_eq!(fail(&text).document, Some(2));
        // The same name in two namespaces is two policies.
        let text = format!(
            "{}---\n{}",
            policy("web", ""),
            policy("web", "  namespace: prod\n")
        );
        assert_eq!(load(&text).len(), 2);
    }

    #[test]
    fn error_display_leaves_out_what_is_not_known() {
        let mut error = LoadError {
            file: PathBuf::from("p.yaml"),
            document: None,
            line: None,
            field: None,
            message: "cannot read the file: denied".to_owned(),
        };
        assert_eq!(error.to_string(), "p.yaml: cannot read the file: denied");
        error.line = Some(3);
        assert_eq!(
            error.to_string(),
            "p.yaml: line 3: cannot read the file: denied"
        );
        error.document = Some(2);
        error.line = None;
        error.field = Some("spec".to_owned());
        assert_eq!(
            error.to_string(),
            "p.yaml: document 2: spec: cannot read the file: denied"
        );
    }

    #[test]
    fn load_file_reads_and_names_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("web.yml");
        fs::write(&path, policy("web", "")).expect("write");
        let loaded = load_file(&path).expect("loads");
        assert_eq!(loaded[0].file, path);

        let missing = dir.path().join("missing.yaml");
        let error = load_file(&missing).expect_err("missing");
        assert_eq!(
            (error.file.as_path(), error.document, error.line),
            (missing.as_path(), None, None)
        );
        assert!(
            error.message.starts_with("cannot read the file: "),
            "{error}"
        );

        let binary = dir.path().join("binary.yaml");
        fs::write(&binary, [0xff, 0xfe, 0x00]).expect("write");
        assert!(
            load_file(&binary)
                .expect_err("not UTF-8")
                .message
                .starts_with("cannot read the file: ")
        );
    }

    #[test]
    fn load_file_reads_json_by_extension() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("web.json");
        let json = r#"{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "web"}}"#;
        fs::write(&path, json).expect("write");
        assert_eq!(load_file(&path).expect("loads").len(), 1);
        fs::write(&path, "apiVersion: networking.k8s.io/v1\n").expect("write");
        assert!(
            load_file(&path).is_err(),
            "YAML in a .json file is not JSON"
        );
    }

    #[test]
    fn load_dir_reads_policy_files_in_name_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, text: &str| fs::write(dir.path().join(name), text).expect("write");
        write(
            "b.yaml",
            &format!("{}---\n{}", policy("b1", ""), policy("b2", "")),
        );
        write("a.yml", &policy("a", ""));
        write(
            "c.json",
            r#"{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "c"}}"#,
        );
        write(".d.yaml", "broken: [");
        write(".#e.yaml", "broken: [");
        write("f.yaml~", "broken: [");
        write("g.txt", "broken: [");
        write("h.YAML", "broken: [");
        fs::create_dir(dir.path().join("sub.yaml")).expect("dir");
        fs::write(dir.path().join("sub.yaml").join("i.yaml"), "broken: [").expect("write");

        let loaded = load_dir(dir.path()).expect("loads");
        let seen: Vec<_> = loaded
            .iter()
            .map(|l| {
                let file = l.file.file_name().and_then(|n| n.to_str()).unwrap_or("?");
                (
                    file.to_owned(),
                    l.document,
                    l.policy.metadata.name.clone().unwrap_or_default(),
                )
            })
            .collect();
        let expected = [
            ("a.yml", 1, "a"),
            ("b.yaml", 1, "b1"),
            ("b.yaml", 2, "b2"),
            ("c.json", 1, "c"),
        ];
        let expected: Vec<_> = expected
            .iter()
            .map(|(f, d, n)| ((*f).to_owned(), *d, (*n).to_owned()))
            .collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn load_dir_follows_links_like_a_mounted_config_map() {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("..2026_11_28_12_00_00.123");
        fs::create_dir(&data).expect("dir");
        fs::write(data.join("web.yaml"), policy("web", "")).expect("write");
        symlink("..2026_11_28_12_00_00.123", dir.path().join("..data")).expect("link");
        symlink("..data/web.yaml", dir.path().join("web.yaml")).expect("link");
        let loaded = load_dir(dir.path()).expect("loads");
        assert_eq!(summary(&loaded), [(1, Some(1), "default/web".to_owned())]);
        assert_eq!(loaded[0].file, dir.path().join("web.yaml"));

        symlink("nowhere.yaml", dir.path().join("broken.yaml")).expect("link");
        let error = load_dir(dir.path()).expect_err("broken link");
        assert_eq!(error.file, dir.path().join("broken.yaml"));
    }

    #[test]
    fn load_dir_refuses_a_policy_defined_in_two_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(
            dir.path().join("a.yaml"),
            policy("web", "  namespace: prod\n"),
        )
        .expect("write");
        let second = format!(
            "{}---\n{}",
            policy("api", "  namespace: prod\n"),
            policy("web", "  namespace: prod\n")
        );
        fs::write(dir.path().join("b.yaml"), second).expect("write");
        let error = load_dir(dir.path()).expect_err("twice");
        assert_eq!(error.file, dir.path().join("b.yaml"));
        assert_eq!((error.document, error.line), (Some(2), Some(7)));
        assert_eq!(
            error.message,
            format!(
                "NetworkPolicy prod/web is defined twice: first in {} document 1 (line 1)",
                dir.path().join("a.yaml").display()
            )
        );
    }

    #[test]
    fn load_dir_errors() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(load_dir(dir.path()).expect("empty"), vec![]);
        fs::write(dir.path().join("a.yaml"), "apiVersion: v1\nkind: Pod\n").expect("write");
        let error = load_dir(dir.path()).expect_err("not a policy");
        assert_eq!(error.file, dir.path().join("a.yaml"));
        let missing = dir.path().join("missing");
        let error = load_dir(&missing).expect_err("no folder");
        assert_eq!(error.file, missing);
        assert!(
            error.message.starts_with("cannot list the folder: "),
            "{error}"
        );
    }

    #[test]
    fn paths_read_back_as_written() {
        for field in [
            "spec",
            "spec.ingress[0].from[12].ipBlock.except[3]",
            "metadata.labels[app.kubernetes.io/name]",
            "[a b].c",
        ] {
            let steps = parse_path(field);
            assert_eq!(render(&steps), field);
        }
        assert_eq!(
            parse_path("a[1][x.y].b"),
            [
                Step::Key("a".into()),
                Step::Index(1),
                Step::Key("x.y".into()),
                Step::Key("b".into())
            ]
        );
        assert_eq!(parse_path("a[unclosed"), [Step::Key("a".into())]);
    }

    #[test]
    fn suggestions_are_close_or_the_same_but_for_case() {
        let known = ["podSelector", "policyTypes", "ingress", "egress"];
        assert_eq!(closest("PODSELECTOR", &known), Some("podSelector"));
        assert_eq!(closest("egres", &known), Some("egress"));
        assert_eq!(closest("policyType", &known), Some("policyTypes"));
        assert_eq!(closest("to", &known), None);
        assert_eq!(closest("spec", &known), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    /// A name for the round trip: a DNS label.
    fn name() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9-]{0,8}[a-z0-9]"
    }

    fn port() -> impl Strategy<Value = k8s_openapi::api::networking::v1::NetworkPolicyPort> {
        use k8s_openapi::api::networking::v1::NetworkPolicyPort;
        let protocol = prop::option::of(prop_oneof![Just("TCP"), Just("UDP"), Just("SCTP")]);
        let number = (1..=65535i32, prop::option::of(0..100i32)).prop_map(|(port, span)| {
            (
                IntOrString::Int(port),
                span.map(|s| port.saturating_add(s).min(65535)),
            )
        });
        let named = "[a-z]{1,15}".prop_map(|name| (IntOrString::String(name), None));
        (protocol, prop::option::of(prop_oneof![number, named])).prop_map(|(protocol, port)| {
            NetworkPolicyPort {
                protocol: protocol.map(str::to_owned),
                end_port: port.as_ref().and_then(|(_, end)| *end),
                port: port.map(|(port, _)| port),
            }
        })
    }

    fn peer() -> impl Strategy<Value = k8s_openapi::api::networking::v1::NetworkPolicyPeer> {
        use k8s_openapi::{
            api::networking::v1::{IPBlock, NetworkPolicyPeer},
            apimachinery::pkg::apis::meta::v1::LabelSelector,
        };
        let selector = || {
            prop::collection::btree_map(name(), name(), 0..3).prop_map(|labels| LabelSelector {
                match_labels: Some(labels),
                match_expressions: None,
            })
        };
        let block = (any::<[u8; 4]>(), 0..=24u8, prop::option::of(1..=8u8)).prop_map(
            |(octets, len, extra)| {
                let net = ipnet::Ipv4Net::new(octets.into(), len)
                    .expect("prefix <= 32")
                    .trunc();
                IPBlock {
                    cidr: net.to_string(),
                    except: extra.map(|extra| {
                        let inner =
                            ipnet::Ipv4Net::new(net.addr(), len + extra).expect("prefix <= 32");
                        vec![inner.to_string()]
                    }),
                }
            },
        );
        prop_oneof![
            (prop::option::of(selector()), prop::option::of(selector()))
                .prop_filter("a peer names something", |(pods, namespaces)| pods
                    .is_some()
                    || namespaces.is_some())
                .prop_map(|(pod_selector, namespace_selector)| NetworkPolicyPeer {
                    pod_selector,
                    namespace_selector,
                    ip_block: None,
                }),
            block.prop_map(|ip_block| NetworkPolicyPeer {
                ip_block: Some(ip_block),
                ..Default::default()
            }),
        ]
    }

    fn network_policy() -> impl Strategy<Value = NetworkPolicy> {
        use k8s_openapi::{
            api::networking::v1::{
                NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicySpec,
            },
            apimachinery::pkg::apis::meta::v1::ObjectMeta,
        };
        let ingress = (
            prop::option::of(prop::collection::vec(peer(), 0..3)),
            prop::option::of(prop::collection::vec(port(), 0..3)),
        )
            .prop_map(|(from, ports)| NetworkPolicyIngressRule { from, ports });
        let egress = (
            prop::option::of(prop::collection::vec(peer(), 0..3)),
            prop::option::of(prop::collection::vec(port(), 0..3)),
        )
            .prop_map(|(to, ports)| NetworkPolicyEgressRule { to, ports });
        let types =
            prop::sample::subsequence(vec!["Ingress".to_owned(), "Egress".to_owned()], 0..=2);
        (
            name(),
            name(),
            prop::option::of(prop::collection::vec(ingress, 0..3)),
            prop::option::of(prop::collection::vec(egress, 0..3)),
            prop::option::of(types),
        )
            .prop_map(
                |(name, namespace, ingress, egress, policy_types)| NetworkPolicy {
                    metadata: ObjectMeta {
                        name: Some(name),
                        namespace: Some(namespace),
                        ..Default::default()
                    },
                    spec: Some(NetworkPolicySpec {
                        pod_selector: Some(Default::default()),
                        ingress,
                        egress,
                        policy_types,
                    }),
                },
            )
    }

    /// Valid policies with distinct names.
    fn network_policies() -> impl Strategy<Value = Vec<NetworkPolicy>> {
        prop::collection::vec(network_policy(), 1..5).prop_map(|mut policies| {
            for (i, policy) in policies.iter_mut().enumerate() {
                policy.metadata.name = policy
                    .metadata
                    .name
                    .take()
                    .map(|name| format!("{name}-{i}"));
            }
            policies
        })
    }

    fn policies_of(loaded: Vec<Loaded>) -> Vec<NetworkPolicy> {
        loaded.into_iter().map(|l| l.policy).collect()
    }

    proptest! {
        #[test]
        fn valid_policies_round_trip_through_yaml_documents(policies in network_policies()) {
            let text: Vec<String> = policies.iter().map(|p| serde_yaml::to_string(p).expect("serializes")).collect();
            let text = text.join("---\n");
            let loaded = load_str(&text, Path::new(YAML)).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            let numbers: Vec<_> = loaded.iter().map(|l| l.document).collect();
            prop_assert_eq!(numbers, (1..=policies.len()).collect::<Vec<_>>());
            prop_assert!(loaded.iter().all(|l| l.line.is_some()));
            prop_assert_eq!(policies_of(loaded), policies);
        }

        #[test]
        fn valid_policies_round_trip_through_a_list(policies in network_policies()) {
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": policies});
            let yaml = serde_yaml::to_string(&list).expect("serializes");
            let loaded = load_str(&yaml, Path::new(YAML)).map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
            prop_assert!(loaded.iter().all(|l| l.line.is_some()), "{}", yaml);
            prop_assert_eq!(policies_of(loaded), policies.clone());
            let json = serde_json::to_string_pretty(&list).expect("serializes");
            let loaded = load_str(&json, Path::new(JSON)).map_err(|e| TestCaseError::fail(format!("{e}\n{json}")))?;
            prop_assert_eq!(policies_of(loaded), policies);
        }

        #[test]
        fn any_text_loads_or_fails_without_panicking(text in "(apiVersion|kind|metadata|spec|items|---|- |: |\\{|\\}|\\[|\\]|\"|'|#|\n|  |[a-z0-9./]){0,60}") {
            for file in [YAML, JSON] {
                if let Err(error) = load_str(&text, Path::new(file)) {
                    prop_assert!(error.to_string().starts_with(file));
                    prop_assert!(error.document.is_some());
                }
            }
        }
    }
}
