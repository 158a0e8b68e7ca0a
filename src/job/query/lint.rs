//! Reading a query template's text: which source line each rendered line came from, where a
//! name is referenced, and the lint for placeholders inside quoted SQL strings.
//!
//! In: a query's text (and, for the line map, its rendering). Out: the marked template and the
//! line map, the first line referencing a name, and `QueryProblem`s, the problem type every
//! query check reports. Pure.

use std::fmt;

/// Something wrong with a query and its parameters, as `kdit validate` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryProblem {
    /// 1-based line in the query's text, when the problem has one.
    pub line: Option<usize>,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for QueryProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = self.line {
            write!(f, "line {l}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\nhint: {h}")?;
        }
        Ok(())
    }
}

const MARK_OPEN: char = '\u{E000}';
const MARK_CLOSE: char = '\u{E001}';

/// The template with a marker naming its source line at the start of every line that does
/// not begin inside a template tag. Rendering it tells which source line each output line
/// came from.
pub(super) fn mark_lines(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    let mut in_tag: Option<&str> = None;
    let mut line = 1;
    let mut at_line_start = true;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < text.len() {
        if at_line_start && in_tag.is_none() {
            out.push(MARK_OPEN);
            out.push_str(&line.to_string());
            out.push(MARK_CLOSE);
        }
        at_line_start = false;
        let rest = &text[i..];
        match in_tag {
            None => {
                if let Some(open) = ["{{", "{%", "{#"].iter().find(|o| rest.starts_with(**o)) {
                    in_tag = Some(match *open {
                        "{{" => "}}",
                        "{%" => "%}",
                        _ => "#}",
                    });
                    out.push_str(open);
                    i += 2;
                    continue;
                }
            }
            Some(close) => {
                if rest.starts_with(close) {
                    in_tag = None;
                    out.push_str(close);
                    i += 2;
                    continue;
                }
            }
        }
        let ch = rest.chars().next().expect("non-empty");
        out.push(ch);
        if bytes[i] == b'\n' {
            line += 1;
            at_line_start = true;
        }
        i += ch.len_utf8();
    }
    out
}

pub(super) fn line_map_from_marked(marked: &str, real: &str) -> Option<Vec<usize>> {
    let mut stripped = String::with_capacity(marked.len());
    let mut map = Vec::new();
    let mut last = 1;
    for l in marked.split('\n') {
        let mut first: Option<usize> = None;
        let mut chars = l.chars().peekable();
        let mut text = String::new();
        while let Some(c) = chars.next() {
            if c == MARK_OPEN {
                let mut num = String::new();
                for d in chars.by_ref() {
                    if d == MARK_CLOSE {
                        break;
                    }
                    num.push(d);
                }
                if first.is_none() {
                    first = num.parse().ok();
                }
            } else {
                text.push(c);
            }
        }
        let n = first.unwrap_or(last);
        last = n;
        map.push(n);
        if !stripped.is_empty() || map.len() > 1 {
            stripped.push('\n');
        }
        stripped.push_str(&text);
    }
    (stripped == real).then_some(map)
}

/// `{{ … }}` inside a SQL string literal (`'{{ name }}'`) would become the text `$1::text`,
/// not the value: report it.
pub(super) fn quoted_placeholders(text: &str) -> Vec<QueryProblem> {
    let mut problems = Vec::new();
    let mut in_quote = false;
    let mut in_comment = false;
    let mut line = 1;
    let mut i = 0;
    let b = text.as_bytes();
    while i < b.len() {
        let c = b[i];
        if c == b'\n' {
            line += 1;
            in_comment = false;
            i += 1;
            continue;
        }
        if in_comment {
            i += 1;
            continue;
        }
        if b[i..].starts_with(b"{{") || b[i..].starts_with(b"{%") || b[i..].starts_with(b"{#") {
            let close: &[u8] = match b[i + 1] {
                b'{' => b"}}",
                b'%' => b"%}",
                _ => b"#}",
            };
            if in_quote && b[i + 1] == b'{' {
                let end = text[i..].find("}}").map(|e| i + e + 2).unwrap_or(b.len());
                problems.push(QueryProblem {
                    line: Some(line),
                    message: format!(
                        "`{}` is inside a quoted SQL string, so it would be sent as the text `$1`, not as the value",
                        &text[i..end]
                    ),
                    hint: Some("remove the quotes: parameters are bound as values of their declared type".into()),
                });
            }
            match text[i + 2..].find(std::str::from_utf8(close).unwrap_or("}}")) {
                Some(e) => {
                    line += text[i..i + 2 + e].matches('\n').count();
                    i = i + 2 + e + 2;
                }
                None => break,
            }
            continue;
        }
        if !in_quote && b[i..].starts_with(b"--") {
            in_comment = true;
            i += 2;
            continue;
        }
        if c == b'\'' {
            in_quote = !in_quote;
        }
        i += 1;
    }
    problems
}

/// The first line where `name` appears inside a template tag.
pub(super) fn reference_line(text: &str, name: &str) -> Option<usize> {
    for (start, end) in tag_spans(text) {
        let tag = &text[start..end];
        if contains_word(tag, name) {
            return Some(text[..start].matches('\n').count() + 1);
        }
    }
    None
}

fn tag_spans(text: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        let Some(pos) = rest.find(['{']) else { break };
        let at = i + pos;
        let close = match text.get(at..at + 2) {
            Some("{{") => "}}",
            Some("{%") => "%}",
            _ => {
                i = at + 1;
                continue;
            }
        };
        match text[at + 2..].find(close) {
            Some(e) => {
                spans.push((at, at + 2 + e + 2));
                i = at + 2 + e + 2;
            }
            None => break,
        }
    }
    spans
}

pub(super) fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn find_word(hay: &str, word: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(p) = hay[from..].find(word) {
        let at = from + p;
        let before = hay[..at].chars().next_back();
        let after = hay[at + word.len()..].chars().next();
        let prev_ok = before.is_none_or(|c| !is_ident(c) && c != '.');
        if prev_ok && after.is_none_or(|c| !is_ident(c)) {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

pub(super) fn contains_word(hay: &str, word: &str) -> bool {
    find_word(hay, word).is_some()
}

#[cfg(test)]
mod tests {
    use crate::job::query::StoredQuery;

    #[test]
    fn placeholders_inside_quotes_are_refused() {
        let e = StoredQuery::parse(
            "q.sql",
            "-- @param n text\nselect 'it''s' as a,\n  x from t where name = '{{ n }}' -- '{{ n }}' in a comment is fine\n",
        )
        .unwrap_err();
        assert_eq!(e.problems().len(), 1, "{e}");
        assert_eq!(e.problems()[0].line, Some(3), "{e}");
        assert!(
            StoredQuery::parse("q.sql", "-- @param n text\nselect {{ n }}, 'a' || {{ n }}").is_ok()
        );
    }
}
