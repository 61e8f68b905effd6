//! Diagnostics with source positions, rendered the way rustc and Cedar render theirs:
//! where, what, and how to fix it.

use std::fmt;

/// One problem found in a policy file (or in one of its Cedar files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file name as shown to the user (the `origin` of the policy, or a cedar file path).
    pub file: String,
    /// 1-based line; 0 when the problem has no position (e.g. an unreadable file).
    pub line: u32,
    /// 1-based column, counted in characters.
    pub col: u32,
    pub message: String,
    pub hint: Option<String>,
    /// The text of `line`, for the snippet under the message.
    pub snippet: Option<String>,
    /// How many characters to underline, starting at `col` (at least 1 when a snippet exists).
    pub len: u32,
}

impl Diagnostic {
    /// A diagnostic without a position (file-level problems such as I/O errors).
    pub fn whole_file(file: &str, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            line: 0,
            col: 0,
            message: message.into(),
            hint: None,
            snippet: None,
            len: 0,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            writeln!(f, "{}: error: {}", self.file, self.message)?;
        } else {
            writeln!(
                f,
                "{}:{}:{}: error: {}",
                self.file, self.line, self.col, self.message
            )?;
        }
        let num = self.line.to_string();
        let gutter = " ".repeat(num.len() + 1);
        if let Some(snippet) = &self.snippet {
            writeln!(f, "{gutter}|")?;
            writeln!(f, "{num} | {snippet}")?;
            let pad = " ".repeat(self.col.saturating_sub(1) as usize);
            let carets = "^".repeat(self.len.max(1) as usize);
            writeln!(f, "{gutter}| {pad}{carets}")?;
        }
        if let Some(hint) = &self.hint {
            writeln!(f, "{gutter}= hint: {hint}")?;
        }
        Ok(())
    }
}

/// A policy that could not be loaded. Carries every problem found, not just the first.
#[derive(Debug, Clone, thiserror::Error)]
pub struct PolicyError {
    diagnostics: Vec<Diagnostic>,
}

impl PolicyError {
    pub(crate) fn new(main_file: &str, mut diagnostics: Vec<Diagnostic>) -> Self {
        // The main file's problems first, then each cedar file's, each in reading order.
        diagnostics.sort_by(|a, b| {
            (a.file != main_file, &a.file, a.line, a.col).cmp(&(
                b.file != main_file,
                &b.file,
                b.line,
                b.col,
            ))
        });
        diagnostics.dedup();
        Self { diagnostics }
    }

    pub(crate) fn single(d: Diagnostic) -> Self {
        Self {
            diagnostics: vec![d],
        }
    }

    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diagnostics
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        let n = self.diagnostics.len();
        if n > 1 {
            writeln!(f)?;
            writeln!(f, "error: {n} problems found")?;
        }
        Ok(())
    }
}

/// Maps byte offsets of one source text to lines and columns.
pub(crate) struct SourceMap<'a> {
    pub file: String,
    src: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> SourceMap<'a> {
    pub fn new(file: &str, src: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(src.match_indices('\n').map(|(i, _)| i + 1));
        Self {
            file: file.to_owned(),
            src,
            line_starts,
        }
    }

    /// 1-based line of a byte offset.
    pub fn line_of(&self, offset: usize) -> u32 {
        let idx = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        u32::try_from(idx + 1).unwrap_or(u32::MAX)
    }

    fn line_text(&self, line: u32) -> &'a str {
        let idx = (line as usize).saturating_sub(1);
        let start = self.line_starts.get(idx).copied().unwrap_or(0);
        let end = self
            .line_starts
            .get(idx + 1)
            .map(|e| e.saturating_sub(1))
            .unwrap_or(self.src.len());
        self.src
            .get(start..end)
            .unwrap_or("")
            .trim_end_matches('\r')
    }

    /// A diagnostic pointing at `span` (byte range). Multi-line spans underline the
    /// rest of their first line.
    pub fn diag(
        &self,
        span: std::ops::Range<usize>,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> Diagnostic {
        let start = span.start.min(self.src.len());
        let line = self.line_of(start);
        let line_start = self
            .line_starts
            .get((line as usize).saturating_sub(1))
            .copied()
            .unwrap_or(0);
        let text = self.line_text(line);
        let col_chars = self
            .src
            .get(line_start..start)
            .map(|s| s.chars().count())
            .unwrap_or(0);
        let end = span.end.max(start).min(line_start + text.len());
        let len = self
            .src
            .get(start..end)
            .map(|s| s.chars().count())
            .unwrap_or(1)
            .max(1);
        Diagnostic {
            file: self.file.clone(),
            line,
            col: u32::try_from(col_chars + 1).unwrap_or(u32::MAX),
            message: message.into(),
            hint,
            snippet: Some(text.to_owned()),
            len: u32::try_from(len).unwrap_or(1),
        }
    }
}

/// The nearest candidate to `word`, when it is close enough to be a likely typo.
pub(crate) fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(word, c);
        let close = strsim::damerau_levenshtein(word, c) <= 2 || score >= 0.8;
        if close && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c)
}

/// The hint for an unknown key: the nearest valid key, or the list of valid keys.
pub(crate) fn key_hint(word: &str, candidates: &[&str]) -> String {
    match nearest(word, candidates) {
        Some(c) => format!("did you mean `{c}`?"),
        None => {
            let list: Vec<String> = candidates.iter().map(|c| format!("`{c}`")).collect();
            format!("valid keys here: {}", list.join(", "))
        }
    }
}
