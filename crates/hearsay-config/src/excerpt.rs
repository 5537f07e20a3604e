//! Bounds on what a problem message repeats from the file. A value can be megabytes long (a
//! mistake, or a file that is not a config at all); echoed whole it would bury every other
//! problem and flood the terminal or the journal.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Characters of a value quoted in a message.
pub(crate) const QUOTE_LIMIT: usize = 80;
/// Longest message, or key path, of one problem, whatever produced it.
pub(crate) const MESSAGE_LIMIT: usize = 1024;

/// `text` quoted as `{:?}` does, cut after [`QUOTE_LIMIT`] characters:
/// `"aaaa"… (52428800 bytes)`. Every value from the file goes through this into a message.
pub(crate) fn quote(text: &str) -> String {
    match cut_point(text, QUOTE_LIMIT) {
        None => format!("{text:?}"),
        Some(end) => format!("{:?}… ({} bytes)", &text[..end], text.len()),
    }
}

/// `text` cut after `limit` characters, saying how long it was: `aaaa… (52428800 bytes)`.
pub(crate) fn excerpt(text: &str, limit: usize) -> Cow<'_, str> {
    match cut_point(text, limit) {
        None => Cow::Borrowed(text),
        Some(end) => Cow::Owned(format!("{}… ({} bytes)", &text[..end], text.len())),
    }
}

/// A message written by someone else (serde, humantime, toml) made short: every `"…"` or
/// `` `…` `` segment longer than [`QUOTE_LIMIT`] is cut the way [`quote`] cuts (serde quotes
/// the offending value or key so), and the whole is cut at [`MESSAGE_LIMIT`].
pub(crate) fn bounded(message: &str) -> Cow<'_, str> {
    match shorten_quoted(message) {
        Cow::Borrowed(message) => excerpt(message, MESSAGE_LIMIT),
        Cow::Owned(message) => Cow::Owned(excerpt(&message, MESSAGE_LIMIT).into_owned()),
    }
}

/// Longest source line a syntax error shows whole (toml's message shows the line).
const LINE_LIMIT: usize = 200;
/// Characters shown on each side of the error when the line is longer than that.
const LINE_CONTEXT: usize = 40;

/// toml's message for a syntax error, bounded: toml repeats the whole source line of the error,
/// which may be megabytes long. A longer line is shown around the error only, in toml's layout.
pub(crate) fn syntax_message(text: &str, error: &toml::de::Error) -> String {
    let Some(span) = error.span() else {
        return bounded(error.to_string().trim_end()).into_owned();
    };
    let mut start = span.start.min(text.len());
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let line_start = text[..start].rfind('\n').map_or(0, |at| at + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |at| start + at);
    if cut_point(&text[line_start..line_end], LINE_LIMIT).is_none() {
        return excerpt(error.to_string().trim_end(), MESSAGE_LIMIT).into_owned();
    }
    let line_number = text[..line_start].matches('\n').count() + 1;
    let before = &text[line_start..start];
    let before_count = before.chars().count();
    let (lead, before) = match before.char_indices().nth_back(LINE_CONTEXT - 1) {
        Some((at, _)) if at > 0 => ("…", &before[at..]),
        _ => ("", before),
    };
    let after = &text[start..line_end];
    let (after, trail) = match cut_point(after, LINE_CONTEXT) {
        Some(end) => (&after[..end], "…"),
        None => (after, ""),
    };
    let gutter = " ".repeat(line_number.to_string().len());
    let caret = " ".repeat(lead.chars().count() + before.chars().count());
    format!(
        "TOML parse error at line {line_number}, column {column} (a line of {length} bytes)\n\
         {gutter} |\n\
         {line_number} | {lead}{before}{after}{trail}\n\
         {gutter} | {caret}^\n\
         {message}",
        column = before_count + 1,
        length = line_end - line_start,
        message = bounded(error.message().trim_end()),
    )
}

/// The byte offset after `limit` characters; `None` when `text` is not longer than that.
fn cut_point(text: &str, limit: usize) -> Option<usize> {
    text.char_indices().nth(limit).map(|(at, _)| at)
}

fn shorten_quoted(message: &str) -> Cow<'_, str> {
    if message.len() <= QUOTE_LIMIT {
        return Cow::Borrowed(message);
    }
    let mut out = String::new();
    let mut changed = false;
    let mut rest = message;
    while let Some(open) = rest.find(['"', '`']) {
        // Both quote characters are one byte.
        let quote_char = rest.as_bytes()[open] as char;
        let escapes = quote_char == '"';
        let body = &rest[open + 1..];
        let (length, closed) = segment_length(body, quote_char);
        let segment = &body[..length];
        out.push_str(&rest[..=open]);
        match cut_units(segment, escapes, QUOTE_LIMIT) {
            None => {
                out.push_str(segment);
                if closed {
                    out.push(quote_char);
                }
            }
            Some(end) => {
                changed = true;
                out.push_str(&segment[..end]);
                out.push(quote_char);
                let _ = write!(out, "… ({} bytes)", segment.len());
            }
        }
        rest = &body[length + usize::from(closed)..];
    }
    if !changed {
        return Cow::Borrowed(message);
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Bytes up to the closing `quote_char` (a backslash escapes the next character inside `"…"`),
/// and whether there was one.
fn segment_length(body: &str, quote_char: char) -> (usize, bool) {
    let bytes = body.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'\\' if quote_char == '"' => at += 2,
            byte if byte == quote_char as u8 => return (at, true),
            _ => at += 1,
        }
    }
    (bytes.len(), false)
}

/// The byte offset after `limit` characters of a quoted segment, an escape (`\"`, `\u{1f600}`)
/// counting as one so the cut never splits it; `None` when the segment is not longer.
fn cut_units(segment: &str, escapes: bool, limit: usize) -> Option<usize> {
    let mut units = 0;
    let mut chars = segment.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if units == limit {
            return Some(at);
        }
        units += 1;
        if escapes && c == '\\' {
            if let Some((_, 'u')) = chars.next() {
                if chars.peek().is_some_and(|(_, c)| *c == '{') {
                    for (_, c) in chars.by_ref() {
                        if c == '}' {
                            break;
                        }
                    }
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_quoted_whole_and_long_ones_cut() {
        assert_eq!(quote("drop"), "\"drop\"");
        assert_eq!(quote(&"é".repeat(80)), format!("{:?}", "é".repeat(80)));
        let long = "a".repeat(50_000_000);
        let quoted = quote(&long);
        assert_eq!(
            quoted,
            format!("\"{}\"… (50000000 bytes)", "a".repeat(QUOTE_LIMIT))
        );
        // Cut on a character, not a byte.
        let wide = "é".repeat(100);
        assert_eq!(
            quote(&wide),
            format!("\"{}\"… (200 bytes)", "é".repeat(QUOTE_LIMIT))
        );
        assert_eq!(excerpt("abc", 2), "ab… (3 bytes)");
        assert_eq!(excerpt("abc", 3), "abc");
    }

    #[test]
    fn long_quoted_segments_of_foreign_messages_are_cut() {
        let value = "x".repeat(10_000);
        let message = format!("invalid type: string {value:?}, expected a boolean");
        assert_eq!(
            bounded(&message),
            format!(
                "invalid type: string \"{}\"… (10000 bytes), expected a boolean",
                "x".repeat(QUOTE_LIMIT)
            )
        );
        let message = format!("unknown field `{value}`, expected one of `name`, `bind`");
        assert_eq!(
            bounded(&message),
            format!(
                "unknown field `{}`… (10000 bytes), expected one of `name`, `bind`",
                "x".repeat(QUOTE_LIMIT)
            )
        );
        // Escapes count as one character and are never split; short segments stay.
        let escaped = format!("{:?}", "\"".repeat(200));
        let message = format!("bad {escaped} and \"ok\"");
        let shortened = bounded(&message);
        assert!(
            shortened.starts_with(&format!("bad \"{}\"… (", "\\\"".repeat(QUOTE_LIMIT))),
            "{shortened}"
        );
        assert!(shortened.ends_with("bytes) and \"ok\""), "{shortened}");
        let unicode = format!("{:?}", "\u{7}".repeat(200));
        assert!(bounded(&format!("bad {unicode}"))
            .contains(&format!("\"{}\"… (", "\\u{7}".repeat(QUOTE_LIMIT))));
        // Untouched when nothing is long; an unclosed quote runs to the end.
        let plain =
            "must be at least 16 characters (it travels as \"authorization: Bearer <token>\")";
        assert!(matches!(bounded(plain), Cow::Borrowed(_)));
        let unclosed = format!("oops `{}", "y".repeat(500));
        assert_eq!(
            bounded(&unclosed),
            format!("oops `{}`… (500 bytes)", "y".repeat(QUOTE_LIMIT))
        );
        // Whatever the shape, the whole is bounded.
        let huge = "z ".repeat(1_000_000);
        assert!(bounded(&huge).len() < MESSAGE_LIMIT + 40);
    }
}
