//! The one place where remote command lines are built.
//!
//! An SSH `exec` request carries a single string that the remote login shell
//! parses, so every argument must be quoted for a POSIX shell. Doing that in
//! one function, and making [`CommandLine`] the only thing the SSH layer
//! accepts, means no caller can forget to quote or quote differently.

use std::fmt;

/// Quotes `arg` so a POSIX shell reads it back as exactly one word with
/// exactly these bytes: wrap it in single quotes (inside which nothing is
/// special) and turn each `'` into `'\''` (close, escaped quote, reopen).
///
/// Words made only of characters no shell treats specially are left bare,
/// which keeps logged command lines readable.
pub fn quote(arg: &str) -> String {
    let safe = |c: char| {
        c.is_ascii_alphanumeric()
            || matches!(c, '-' | '_' | '.' | '/' | ':' | '=' | '+' | ',' | '@')
    };
    // A leading `~` would be tilde-expanded even with only safe characters after it.
    if !arg.is_empty() && arg.chars().all(safe) && !arg.starts_with('~') {
        return arg.to_owned();
    }
    let mut out = String::with_capacity(arg.len() + 2);
    out.push('\'');
    for c in arg.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// `text` as a PowerShell single-quoted string literal: nothing inside one
/// is expanded, and a quote character is written twice. PowerShell counts
/// the typographic single quotes (U+2018, U+2019, U+201A, U+201B) as quotes
/// too, so they are doubled as well.
pub fn powershell_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        if matches!(c, '\'' | '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}') {
            out.push(c);
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// A remote command: a program and its arguments, each quoted by [`quote`]
/// when the line is rendered.
#[derive(Clone, PartialEq, Eq)]
pub struct CommandLine {
    words: Vec<String>,
}

impl CommandLine {
    pub fn new(program: impl Into<String>) -> Self {
        Self {
            words: vec![program.into()],
        }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.words.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.words.extend(args.into_iter().map(Into::into));
        self
    }

    /// The same command with its stderr sent to stdout, so a reader of one
    /// stream sees messages in the order they were written:
    /// `sh -c 'exec "$@" 2>&1' sh <words…>`. The words stay arguments, never
    /// part of the script.
    pub fn with_stderr_merged(self) -> Self {
        Self::new("sh")
            .args(["-c", "exec \"$@\" 2>&1", "sh"])
            .args(self.words)
    }

    /// The program and arguments as given, unquoted.
    pub fn words(&self) -> &[String] {
        &self.words
    }

    /// Whether any word holds a NUL byte. A shell cannot receive one (the
    /// line would be cut there), so the SSH layer refuses such lines.
    pub fn has_nul(&self) -> bool {
        self.words.iter().any(|w| w.contains('\0'))
    }

    /// The line the remote shell will parse.
    pub fn render(&self) -> String {
        self.words
            .iter()
            .map(|w| quote(w))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl fmt::Display for CommandLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

impl fmt::Debug for CommandLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CommandLine({})", self.render())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn powershell_literals_double_every_kind_of_single_quote() {
        assert_eq!(powershell_literal("ovdeploy"), "'ovdeploy'");
        assert_eq!(powershell_literal(""), "''");
        assert_eq!(powershell_literal("it's"), "'it''s'");
        assert_eq!(powershell_literal("a\u{2019}b"), "'a\u{2019}\u{2019}b'");
        // Nothing else is special inside single quotes.
        assert_eq!(powershell_literal("$env:X `n \"x\""), "'$env:X `n \"x\"'");
    }

    #[test]
    fn plain_words_stay_bare() {
        assert_eq!(quote("virsh"), "virsh");
        assert_eq!(quote("qemu:///system"), "qemu:///system");
        assert_eq!(quote("--all"), "--all");
        assert_eq!(quote("web-01.example"), "web-01.example");
    }

    #[test]
    fn special_words_are_single_quoted() {
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("x;touch /tmp/pwned"), "'x;touch /tmp/pwned'");
        assert_eq!(quote("$(id)"), "'$(id)'");
        assert_eq!(quote("`id`"), "'`id`'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote("'"), "''\\'''");
        assert_eq!(quote("a\nb"), "'a\nb'");
        assert_eq!(quote("~root"), "'~root'");
        assert_eq!(quote("*"), "'*'");
        assert_eq!(quote("\\"), "'\\'");
    }

    #[test]
    fn merged_stderr_keeps_words_as_arguments() {
        // Run the rendered line through a real shell, as sshd would.
        let line = CommandLine::new("sh")
            .args(["-c", "echo out; echo \"$1\" >&2", "sh", "a'b; $(id) *"])
            .with_stderr_merged()
            .render();
        let out = std::process::Command::new("sh")
            .args(["-c", &line])
            .output()
            .expect("sh runs");
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "out\na'b; $(id) *\n");
        assert!(out.stderr.is_empty(), "{:?}", out.stderr);
    }

    #[test]
    fn command_line_renders_each_word_quoted() {
        let c = CommandLine::new("virsh")
            .args(["-c", "qemu:///system", "start"])
            .arg("a'b; rm -rf /");
        assert_eq!(
            c.render(),
            "virsh -c qemu:///system start 'a'\\''b; rm -rf /'"
        );
        assert_eq!(c.words().len(), 5);
        assert!(!c.has_nul());
        assert!(CommandLine::new("echo").arg("a\0b").has_nul());
    }

    /// The real test: a shell must read every hostile word back unchanged.
    #[test]
    fn a_real_shell_reads_back_the_same_words() {
        let hostile = [
            "plain",
            "",
            " ",
            "a b  c",
            "x;touch /tmp/ov-quote-pwned",
            "$(touch /tmp/ov-quote-pwned)",
            "`touch /tmp/ov-quote-pwned`",
            "'",
            "''",
            "\"",
            "it's \"quoted\"",
            "\\",
            "\\'",
            "a\nb\r\n",
            "\t",
            "$HOME ${HOME} $1 $@ $*",
            "*",
            "?",
            "[a]",
            "~",
            "~root",
            "a=b",
            "-n",
            "-e",
            "!",
            "!!",
            "#comment",
            "&&|;<>()",
            "{a,b}",
            "ünïcödé ✓",
            "\u{1b}[31m",
        ];
        let mut line = CommandLine::new("printf").arg("%s\\0");
        for h in hostile {
            line = line.arg(h);
        }
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(line.render())
            .output()
            .expect("run sh");
        assert!(out.status.success());
        let words: Vec<&[u8]> = out.stdout.split(|b| *b == 0).collect();
        // printf's output ends with a NUL, so the split has one empty tail.
        assert_eq!(words.len(), hostile.len() + 1);
        for (got, want) in words.iter().zip(hostile) {
            assert_eq!(*got, want.as_bytes());
        }
        assert!(!std::path::Path::new("/tmp/ov-quote-pwned").exists());
    }
}
