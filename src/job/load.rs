//! Reading job and project files: bytes → YAML → JSON value checked against the JSON Schema
//! → typed spec, with every problem located at `file:line:col`.
//!
//! In: a path. Out: a `Loaded<T>` (the typed value when it could be built, the source map for
//! later stages, and all diagnostics found). The only module that reads job files from disk.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use saphyr_parser::{Event, Parser, Span};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::job::attributes::suggest;
use crate::job::diagnostic::Diagnostic;

/// Job files larger than this are refused before parsing: no real job is near it, and a
/// huge file is far more likely a mistake (or an attack on the parser).
pub const MAX_FILE_BYTES: usize = 1024 * 1024;

/// A file read from disk.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

/// Positions of keys and values in a YAML document, by JSON pointer (`/profiles/fields/email`).
#[derive(Debug, Default, Clone)]
pub struct SourceMap {
    values: HashMap<String, (usize, usize, usize)>,
    keys: HashMap<String, (usize, usize, usize)>,
}

impl SourceMap {
    /// Line, column (1-based) and width of the value at `pointer`, or of its closest
    /// ancestor that has one.
    pub fn value(&self, pointer: &str) -> (usize, usize, usize) {
        let mut p = pointer;
        loop {
            if let Some(pos) = self.values.get(p) {
                return *pos;
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => return (1, 1, 1),
            }
        }
    }

    /// Line, column and width of the key that names `pointer`'s value, else of the value.
    pub fn key(&self, pointer: &str) -> (usize, usize, usize) {
        self.keys
            .get(pointer)
            .copied()
            .unwrap_or_else(|| self.value(pointer))
    }
}

/// Joins a JSON pointer and one more segment, escaping it.
pub fn pointer_join(base: &str, segment: &str) -> String {
    format!("{base}/{}", segment.replace('~', "~0").replace('/', "~1"))
}

/// What loading produced.
#[derive(Debug)]
pub struct Loaded<T> {
    pub file: SourceFile,
    pub map: SourceMap,
    /// The raw document, when the YAML parsed.
    pub raw: Option<Value>,
    /// The typed spec, when the document matched the schema.
    pub spec: Option<T>,
    pub diagnostics: Vec<Diagnostic>,
}

impl<T> Loaded<T> {
    /// A located diagnostic at the value `pointer` names.
    pub fn at_value(&self, d: Diagnostic, pointer: &str) -> Diagnostic {
        let (line, col, width) = self.map.value(pointer);
        d.at(&self.file.text, line, col, width)
    }

    /// A located diagnostic at the key that names `pointer`.
    pub fn at_key(&self, d: Diagnostic, pointer: &str) -> Diagnostic {
        let (line, col, width) = self.map.key(pointer);
        d.at(&self.file.text, line, col, width)
    }
}

/// Which schema a file is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Job,
    Project,
}

fn validator(kind: Kind) -> &'static jsonschema::Validator {
    static JOB: OnceLock<jsonschema::Validator> = OnceLock::new();
    static PROJECT: OnceLock<jsonschema::Validator> = OnceLock::new();
    let (cell, schema): (_, fn() -> Value) = match kind {
        Kind::Job => (&JOB, crate::job::spec::job_schema),
        Kind::Project => (&PROJECT, crate::job::spec::project_schema),
    };
    cell.get_or_init(|| {
        jsonschema::validator_for(&schema()).expect("kdit's own schema is a valid JSON Schema")
    })
}

/// A file that could not be parsed: its text (if any) and why.
fn unloaded<T>(path: &Path, text: String, diagnostics: Vec<Diagnostic>) -> Loaded<T> {
    Loaded {
        file: SourceFile {
            path: path.to_path_buf(),
            text,
        },
        map: SourceMap::default(),
        raw: None,
        spec: None,
        diagnostics,
    }
}

/// Reads and checks one file. Never panics on any input.
pub fn load<T: DeserializeOwned>(path: &Path, kind: Kind) -> Loaded<T> {
    let empty = |text: String, d: Vec<Diagnostic>| unloaded(path, text, d);
    match std::fs::read(path) {
        Ok(bytes) => load_bytes(path, bytes, kind),
        Err(e) => empty(
            String::new(),
            vec![Diagnostic::error(
                "unreadable",
                path,
                format!("cannot read the file: {e}"),
            )],
        ),
    }
}

/// Why a stored query file could not be read.
#[derive(Debug)]
pub enum ReadQueryError {
    Io(std::io::Error),
    /// A folder, device, FIFO or socket: reading `/dev/zero` or a FIFO would never end.
    NotAFile,
    /// Larger than `MAX_FILE_BYTES` (the size in bytes, as far as it was read).
    TooLarge(u64),
}

impl std::fmt::Display for ReadQueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadQueryError::Io(e) => write!(f, "{e}"),
            ReadQueryError::NotAFile => write!(f, "not a regular file"),
            ReadQueryError::TooLarge(bytes) => write!(
                f,
                "{bytes} bytes or more; kdit reads stored queries of at most {MAX_FILE_BYTES} bytes"
            ),
        }
    }
}

impl std::error::Error for ReadQueryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReadQueryError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Reads a stored query file: a regular file of at most `MAX_FILE_BYTES`, as job files are,
/// so that no job file can make validation wait forever or exhaust memory.
pub fn read_query(path: &Path) -> Result<String, ReadQueryError> {
    use std::io::Read;
    // Checked before opening: opening a FIFO waits for a writer.
    let meta = std::fs::metadata(path).map_err(ReadQueryError::Io)?;
    if !meta.is_file() {
        return Err(ReadQueryError::NotAFile);
    }
    if meta.len() > MAX_FILE_BYTES as u64 {
        return Err(ReadQueryError::TooLarge(meta.len()));
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES as u64 + 1).read_to_string(&mut text))
        .map_err(ReadQueryError::Io)?;
    if text.len() > MAX_FILE_BYTES {
        return Err(ReadQueryError::TooLarge(text.len() as u64));
    }
    Ok(text)
}

/// Checks a file's bytes as `load` read them: size limit, UTF-8, then `parse_text` (split
/// from `load` for the fuzz targets, which feed arbitrary bytes). Never panics on any input.
pub fn load_bytes<T: DeserializeOwned>(path: &Path, bytes: Vec<u8>, kind: Kind) -> Loaded<T> {
    let empty = |text: String, d: Vec<Diagnostic>| unloaded(path, text, d);
    if bytes.len() > MAX_FILE_BYTES {
        return empty(
            String::new(),
            vec![
                Diagnostic::error(
                    "file-too-large",
                    path,
                    format!(
                        "the file is {} bytes; kdit reads job files of at most {} bytes",
                        bytes.len(),
                        MAX_FILE_BYTES
                    ),
                )
                .hint("is this really a job file? Large data belongs in PostgreSQL"),
            ],
        );
    }
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let prefix = String::from_utf8_lossy(valid).into_owned();
            let line = prefix.matches('\n').count() + 1;
            let col = prefix.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            let d = Diagnostic::error("not-utf8", path, "the file is not valid UTF-8 text")
                .hint("job files are YAML text in UTF-8; is this a binary file?");
            let text = String::from_utf8_lossy(e.as_bytes()).into_owned();
            let d = d.at(&text, line, col, 1);
            return empty(text, vec![d]);
        }
    };
    parse_text(path, text, kind)
}

/// Checks a file's text (split from `load` for tests and fuzzing).
pub fn parse_text<T: DeserializeOwned>(path: &Path, text: String, kind: Kind) -> Loaded<T> {
    let mut loaded = Loaded {
        file: SourceFile {
            path: path.to_path_buf(),
            text,
        },
        map: SourceMap::default(),
        raw: None,
        spec: None,
        diagnostics: Vec::new(),
    };
    let raw: Value = match yaml_serde::from_str(&loaded.file.text) {
        Ok(v) => v,
        Err(e) => {
            let d = yaml_error(path, &loaded.file.text, &e);
            loaded.diagnostics.push(d);
            return loaded;
        }
    };
    loaded.map = source_map(&loaded.file.text);
    let mut diags = Vec::new();
    find_secrets(&raw, "", &mut |pointer, message, hint| {
        diags.push(loaded.at_value(
            Diagnostic::error("secret-in-file", path, message).hint(hint),
            pointer,
        ));
    });
    schema_errors(
        &raw,
        kind,
        &mut |pointer, key, d| {
            diags.push(if key {
                loaded.at_key(d, pointer)
            } else {
                loaded.at_value(d, pointer)
            });
        },
        path,
    );
    if !diags.is_empty() {
        // Keep going past schema errors so meaning checks still run: drop every value the
        // schema rejected and build the spec from what is left, when that still works.
        let mut pruned = raw.clone();
        let mut bad = Vec::new();
        schema_errors(
            &raw,
            kind,
            &mut |pointer, _, _| bad.push(pointer.to_string()),
            path,
        );
        bad.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for pointer in bad {
            remove_pointer(&mut pruned, &pointer);
        }
        // Top-level scalars every file needs get a stand-in, so the rest can still be checked.
        if let Value::Object(m) = &mut pruned {
            m.entry("version").or_insert(Value::from(1));
            if kind == Kind::Job {
                m.entry("name").or_insert(Value::from("job"));
            }
        }
        if validator(kind).is_valid(&pruned) {
            loaded.spec = serde_json::from_value::<T>(pruned).ok();
        }
    } else {
        match serde_json::from_value::<T>(raw.clone()) {
            Ok(spec) => loaded.spec = Some(spec),
            Err(e) => diags
                .push(loaded.at_value(Diagnostic::error("invalid-value", path, e.to_string()), "")),
        }
    }
    loaded.raw = Some(raw);
    loaded.diagnostics.extend(diags);
    loaded
}

/// Removes the value at a JSON pointer (no-op when absent).
fn remove_pointer(value: &mut Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let last = last.replace("~1", "/").replace("~0", "~");
    match value.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.shift_remove(&last);
        }
        Some(Value::Array(a)) => {
            if let Ok(i) = last.parse::<usize>()
                && i < a.len()
            {
                a.remove(i);
            }
        }
        _ => {}
    }
}

fn yaml_error(path: &Path, text: &str, e: &yaml_serde::Error) -> Diagnostic {
    let message = e.to_string();
    // yaml_serde appends " at line N column M"; the location is shown separately.
    // (the context after it, "while parsing … at line N", is worth keeping).
    let short = match message.find(" at line ") {
        Some(i) => {
            let rest = &message[i + 1..];
            match rest.find(", while ") {
                Some(j) => format!("{} ({})", &message[..i], &rest[j + 2..]),
                None => message[..i].to_string(),
            }
        }
        None => message.clone(),
    };
    let (code, hint) = if short.contains("recursion limit") {
        (
            "yaml-too-deep",
            "job files are shallow; flatten the nesting",
        )
    } else if short.contains("repetition limit") || short.contains("alias") {
        (
            "yaml-alias",
            "anchors and aliases expand too much here; write the values out",
        )
    } else if short.contains("more than one document") {
        (
            "yaml-syntax",
            "put one job in each file (no `---` separators)",
        )
    } else {
        (
            "yaml-syntax",
            "check indentation (spaces, not tabs), colons after keys and closing quotes or brackets",
        )
    };
    let d = Diagnostic::error(code, path, format!("invalid YAML: {short}")).hint(hint);
    match e.location() {
        Some(loc) => d.at(text, loc.line(), loc.column(), 1),
        // Some errors (e.g. several documents) come without a place: point at the start.
        None if !text.is_empty() => d.at(text, 1, 1, 1),
        None => d,
    }
}

/// Builds the pointer → position map from the YAML event stream. Aliases are not expanded.
fn source_map(text: &str) -> SourceMap {
    enum Frame {
        Map {
            pointer: String,
            key: Option<String>,
        },
        Seq {
            pointer: String,
            index: usize,
        },
    }
    let mut map = SourceMap::default();
    let mut stack: Vec<Frame> = Vec::new();
    let pos = |span: &Span| {
        let width = span.end.index().saturating_sub(span.start.index()).max(1);
        (span.start.line(), span.start.col() + 1, width)
    };
    // Where the next value goes; `None` when it is a key.
    let next_value_pointer = |stack: &mut Vec<Frame>| -> Option<String> {
        match stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Map { pointer, key }) => key.take().map(|k| pointer_join(pointer, &k)),
            Some(Frame::Seq { pointer, index }) => {
                let p = format!("{pointer}/{index}");
                *index += 1;
                Some(p)
            }
        }
    };
    let mut parser = Parser::new_from_str(text);
    while let Some(Ok((event, span))) = parser.next_event() {
        match event {
            Event::Scalar(value, ..) => match next_value_pointer(&mut stack) {
                Some(p) => {
                    map.values.insert(p, pos(&span));
                }
                None => {
                    if let Some(Frame::Map { pointer, key }) = stack.last_mut() {
                        map.keys.insert(pointer_join(pointer, &value), pos(&span));
                        *key = Some(value.into_owned());
                    }
                }
            },
            Event::Alias(_) => {
                if let Some(p) = next_value_pointer(&mut stack) {
                    map.values.insert(p, pos(&span));
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                // A complex (non-scalar) key gets a pointer nobody asks for.
                let p = next_value_pointer(&mut stack).unwrap_or_else(|| "/?".to_string());
                map.values.entry(p.clone()).or_insert(pos(&span));
                stack.push(if matches!(event, Event::MappingStart(..)) {
                    Frame::Map {
                        pointer: p,
                        key: None,
                    }
                } else {
                    Frame::Seq {
                        pointer: p,
                        index: 0,
                    }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
            }
            Event::StreamEnd => break,
            _ => {}
        }
    }
    map
}

/// Calls `report(pointer, message, hint)` for every string that looks like a secret.
fn find_secrets(value: &Value, pointer: &str, report: &mut dyn FnMut(&str, String, String)) {
    match value {
        Value::String(s) => {
            if let Some(problem) = secret_problem(s) {
                report(pointer, problem.0, problem.1);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                find_secrets(item, &format!("{pointer}/{i}"), report);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                find_secrets(v, &pointer_join(pointer, k), report);
            }
        }
        _ => {}
    }
}

/// Is this string a secret that must not live in a job file? Returns (message, hint).
pub fn secret_problem(s: &str) -> Option<(String, String)> {
    let looks_like_key = s
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .any(|w| {
            w.len() >= 20
                && w.starts_with("pk_")
                && w[3..]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
    if looks_like_key {
        return Some((
            "this looks like a literal Klaviyo private API key (`pk_…`)".to_string(),
            "keys never live in job files: set KLAVIYO_API_KEY in the environment, and revoke this key if it was committed".to_string(),
        ));
    }
    if let Some(scheme_end) = s.find("://") {
        let rest = &s[scheme_end + 3..];
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if let Some((userinfo, _host)) = authority.rsplit_once('@')
            && let Some((_user, password)) = userinfo.split_once(':')
            && !password.is_empty()
        {
            return Some((
                "this URL carries a password".to_string(),
                "credentials never live in job files: use DATABASE_URL or PGPASSWORD in the environment (or ~/.pgpass)".to_string(),
            ));
        }
    }
    None
}

/// Checks `raw` against the schema of `kind`; `report(pointer, at_key, diagnostic)`.
fn schema_errors(
    raw: &Value,
    kind: Kind,
    report: &mut dyn FnMut(&str, bool, Diagnostic),
    path: &Path,
) {
    let schema = match kind {
        Kind::Job => crate::job::spec::job_schema(),
        Kind::Project => crate::job::spec::project_schema(),
    };
    for error in validator(kind).iter_errors(raw) {
        describe(&error, raw, &schema, path, report);
    }
}

fn describe(
    error: &jsonschema::ValidationError<'_>,
    raw: &Value,
    schema: &Value,
    path: &Path,
    report: &mut dyn FnMut(&str, bool, Diagnostic),
) {
    use jsonschema::error::ValidationErrorKind as K;
    let pointer = error.instance_path().as_str().to_string();
    let instance = raw.pointer(&pointer).unwrap_or(&Value::Null);
    let field = field_name(&pointer);
    match error.kind() {
        K::AdditionalProperties { unexpected } => {
            let allowed = allowed_properties(schema, error.schema_path().as_str());
            let allowed_refs: Vec<&str> = allowed.iter().map(String::as_str).collect();
            for key in unexpected {
                let hint = match suggest(key, &allowed_refs) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None if allowed.is_empty() => "remove it".to_string(),
                    None => format!("allowed here: {}", allowed.join(", ")),
                };
                report(
                    &pointer_join(&pointer, key),
                    true,
                    Diagnostic::error(
                        "unknown-key",
                        path,
                        format!("unknown key `{key}`{}", in_field(&field)),
                    )
                    .hint(hint),
                );
            }
        }
        K::Required { property } => {
            let name = property.as_str().unwrap_or("?");
            report(
                &pointer,
                false,
                Diagnostic::error(
                    "missing-key",
                    path,
                    format!("missing required key `{name}`{}", in_field(&field)),
                )
                .hint(required_hint(name)),
            );
        }
        K::Type { kind } => {
            let expected = match kind {
                jsonschema::error::TypeKind::Single(t) => t.to_string(),
                // Optional keys are `[T, "null"]`; nobody means to write null there.
                jsonschema::error::TypeKind::Multiple(ts) => ts
                    .iter()
                    .map(|t| t.to_string())
                    .filter(|t| t != "null")
                    .collect::<Vec<_>>()
                    .join(" or "),
            };
            report(
                &pointer,
                false,
                Diagnostic::error(
                    "wrong-type",
                    path,
                    format!(
                        "`{}` must be {} {expected}, not {}",
                        display_field(&field),
                        article(&expected),
                        type_name(instance)
                    ),
                ),
            );
        }
        K::Enum { options } => {
            let opts: Vec<String> = options
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|o| {
                            o.as_str()
                                .map(|s| format!("`{s}`"))
                                .unwrap_or_else(|| o.to_string())
                        })
                        .collect()
                })
                .unwrap_or_default();
            let got = instance
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| instance.to_string());
            let plain: Vec<String> = options
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|o| o.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let plain_refs: Vec<&str> = plain.iter().map(String::as_str).collect();
            let hint = match suggest(&got, &plain_refs) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("one of {}", opts.join(", ")),
            };
            report(
                &pointer,
                false,
                Diagnostic::error(
                    "invalid-value",
                    path,
                    format!(
                        "`{got}` is not a valid value for `{}`",
                        display_field(&field)
                    ),
                )
                .hint(hint),
            );
        }
        K::Constant { expected_value } => report(
            &pointer,
            false,
            Diagnostic::error(
                "invalid-value",
                path,
                format!(
                    "`{}` must be {expected_value}, not {instance}",
                    display_field(&field)
                ),
            )
            .hint(if field == "version" {
                "this kdit reads job files of version 1"
            } else {
                ""
            }),
        ),
        K::AnyOf { context } | K::OneOfNotValid { context } => {
            // Untagged unions (a column name or a mapping, one transform or a list…): report
            // the branch that matches the value's shape, not the union.
            let matching: Vec<&Vec<jsonschema::ValidationError<'static>>> = context
                .iter()
                .filter(|branch| {
                    !branch.iter().any(|e| {
                        e.instance_path().as_str() == pointer
                            && matches!(
                                e.kind(),
                                K::Type { .. } | K::Constant { .. } | K::Enum { .. }
                            )
                    })
                })
                .collect();
            if matching.len() == 1 {
                for e in matching[0] {
                    describe(e, raw, schema, path, report);
                }
            } else if let Some(branch) = context.iter().find(|b| {
                b.len() == 1 && matches!(b[0].kind(), K::Enum { .. }) && instance.is_string()
            }) {
                describe(&branch[0], raw, schema, path, report);
            } else if let Some(options) = union_consts(schema, error.schema_path().as_str()) {
                let got = instance
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| instance.to_string());
                let refs: Vec<&str> = options.iter().map(String::as_str).collect();
                let hint = match suggest(&got, &refs) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!(
                        "one of {}",
                        options
                            .iter()
                            .map(|o| format!("`{o}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                report(
                    &pointer,
                    false,
                    Diagnostic::error(
                        "invalid-value",
                        path,
                        format!(
                            "`{got}` is not a valid value for `{}`",
                            display_field(&field)
                        ),
                    )
                    .hint(hint),
                );
            } else {
                let what = describe_union(schema, error.schema_path().as_str());
                report(
                    &pointer,
                    false,
                    Diagnostic::error(
                        "wrong-type",
                        path,
                        format!(
                            "`{}` has the wrong shape ({})",
                            display_field(&field),
                            type_name(instance)
                        ),
                    )
                    .hint(what),
                );
            }
        }
        K::Pattern { .. } => {
            let hint = if field == "name" {
                "job names use lowercase letters, digits and dashes, e.g. `weekly-active`"
                    .to_string()
            } else if field == "timeout" {
                "write a duration like `30s`, `2m`, `1h`".to_string()
            } else {
                "see `kdit schema` for the expected form".to_string()
            };
            report(
                &pointer,
                false,
                Diagnostic::error(
                    "invalid-value",
                    path,
                    format!(
                        "`{}` is not valid for `{}`",
                        instance.as_str().unwrap_or(""),
                        display_field(&field)
                    ),
                )
                .hint(hint),
            );
        }
        K::Minimum { limit } | K::Maximum { limit } => report(
            &pointer,
            false,
            Diagnostic::error(
                "out-of-range",
                path,
                format!(
                    "`{}` = {instance} is out of range (limit {limit})",
                    display_field(&field)
                ),
            ),
        ),
        _ => report(
            &pointer,
            false,
            Diagnostic::error("schema", path, error.to_string()),
        ),
    }
}

fn in_field(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!(" in `{field}`")
    }
}

fn display_field(field: &str) -> &str {
    if field.is_empty() {
        "the document"
    } else {
        field
    }
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// `/profiles/fields/email` → `profiles.fields.email`.
fn field_name(pointer: &str) -> String {
    pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect::<Vec<_>>()
        .join(".")
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null (empty)",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn required_hint(name: &str) -> String {
    match name {
        "version" => "start the file with `version: 1`".into(),
        "name" => "give the job a name, e.g. `name: weekly-active`".into(),
        "query" => {
            "add `query: { file: queries/<name>.sql }` or `query: { sql: \"select …\" }`".into()
        }
        "profiles" => "add `profiles: { key: email, fields: { email: email } }`".into(),
        "key" => {
            "say which identifier keys rows: `key: email` (or phone_number, external_id)".into()
        }
        "fields" => "map at least the key: `fields: { email: email }`".into(),
        other => format!("add `{other}:`"),
    }
}

/// The schema object a schema path (`/properties/batch/additionalProperties`) points into,
/// with `$ref`s followed.
fn schema_at<'a>(schema: &'a Value, schema_path: &str) -> Option<&'a Value> {
    let mut node = schema;
    let segments: Vec<&str> = schema_path.split('/').skip(1).collect();
    // Drop the final keyword (additionalProperties, anyOf …).
    let parents = segments.len().saturating_sub(1);
    for seg in &segments[..parents] {
        node = follow_ref(schema, node);
        node = match node {
            Value::Object(m) => m.get(*seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(follow_ref(schema, node))
}

fn follow_ref<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(r) if r.starts_with('#') => root.pointer(&r[1..]).unwrap_or(node),
        _ => node,
    }
}

fn allowed_properties(schema: &Value, schema_path: &str) -> Vec<String> {
    schema_at(schema, schema_path)
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// The string constants of a union whose branches are all constants (a documented enum).
fn union_consts(schema: &Value, schema_path: &str) -> Option<Vec<String>> {
    let node = schema_at(schema, schema_path)?;
    let branches = node
        .get("anyOf")
        .or_else(|| node.get("oneOf"))?
        .as_array()?;
    let mut out = Vec::new();
    for b in branches {
        let b = follow_ref(schema, b);
        if let Some(c) = b.get("const").and_then(Value::as_str) {
            out.push(c.to_string());
        } else if let Some(e) = b.get("enum").and_then(Value::as_array) {
            out.extend(e.iter().filter_map(Value::as_str).map(str::to_string));
        } else {
            return None;
        }
    }
    Some(out)
}

fn describe_union(schema: &Value, schema_path: &str) -> String {
    let Some(node) = schema_at(schema, schema_path) else {
        return "see `kdit schema`".into();
    };
    let branches = node
        .get("anyOf")
        .or_else(|| node.get("oneOf"))
        .and_then(Value::as_array);
    let Some(branches) = branches else {
        return "see `kdit schema`".into();
    };
    let kinds: Vec<String> = branches
        .iter()
        .map(|b| {
            let b = follow_ref(schema, b);
            if let Some(t) = b.get("type").and_then(Value::as_str) {
                match t {
                    "object" => {
                        let keys: Vec<String> = b
                            .get("properties")
                            .and_then(Value::as_object)
                            .map(|m| m.keys().take(4).cloned().collect())
                            .unwrap_or_default();
                        if keys.is_empty() {
                            "a mapping".into()
                        } else {
                            format!("a mapping with {}", keys.join("/"))
                        }
                    }
                    "array" => "a list".into(),
                    other => format!("{} {other}", article(other)),
                }
            } else if b.get("enum").is_some() {
                "one of the named values".into()
            } else {
                "a value".into()
            }
        })
        .collect();
    format!("expected {}", kinds.join(", or "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_map_locates_keys_and_values() {
        let text = "a: 1\nb:\n  c: [x, y]\n  d:\n    - e: f\n";
        let m = source_map(text);
        assert_eq!(m.value("/a"), (1, 4, 1));
        assert_eq!(m.key("/b/c"), (3, 3, 1));
        assert_eq!(m.value("/b/c/1"), (3, 10, 1));
        assert_eq!(m.key("/b/d/0/e"), (5, 7, 1));
        assert_eq!(m.value("/b/d/0/e"), (5, 10, 1));
    }

    #[test]
    fn secrets_are_recognised() {
        assert!(secret_problem("pk_abcdefghijklmnopqrstuvwxyz0123").is_some());
        assert!(secret_problem("postgres://me:hunter2@db/x").is_some());
        assert!(secret_problem("postgres://me@db/x").is_none());
        assert!(secret_problem("pk_short").is_none());
    }
}
