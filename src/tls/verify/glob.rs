//! Shell-style patterns for allowlist entries: `*` and `**`.
//!
//! One pattern language for every kind of name keeps the configuration easy
//! to explain: `*` matches a run of characters that does not cross the
//! name's separator (`.` between DNS labels, `/` between URI path segments),
//! `**` matches any run, separators included; everything else is literal.
//! A subject CN has no separator, so there `*` and `**` are the same.
//!
//! Matching is a table walk over (pattern token, input position), so its
//! cost is bounded by `pattern length × input length` whatever the input:
//! names come from certificates, and a backtracking matcher could be made
//! exponential by a pattern with several stars and an unlucky name.

use std::fmt;

/// How a pattern compares characters and where `*` stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Syntax {
    /// DNS names: ASCII case-insensitive (RFC 4343), `*` stays within a label.
    Dns,
    /// URIs and SPIFFE IDs: exact bytes, `*` stays within a path segment.
    Uri,
    /// Subject common names: exact bytes, `*` matches anything.
    Text,
}

impl Syntax {
    fn separator(self) -> Option<u8> {
        match self {
            Syntax::Dns => Some(b'.'),
            Syntax::Uri => Some(b'/'),
            Syntax::Text => None,
        }
    }

    fn same(self, a: u8, b: u8) -> bool {
        match self {
            Syntax::Dns => a.eq_ignore_ascii_case(&b),
            Syntax::Uri | Syntax::Text => a == b,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Literal(u8),
    /// `*`: any run without the separator.
    Star,
    /// `**`: any run at all.
    AnyRun,
}

/// A compiled pattern.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Glob {
    source: String,
    syntax: Syntax,
    tokens: Vec<Token>,
    /// No wildcard: a plain comparison does the job without the table.
    literal: bool,
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}({:?})", self.syntax, self.source)
    }
}

impl Glob {
    /// Compiles a pattern. The caller has already checked it is non-empty and
    /// free of control characters, because only it knows how to name the
    /// entry in an error.
    pub(crate) fn new(pattern: &str, syntax: Syntax) -> Self {
        let bytes = pattern.as_bytes();
        let mut tokens = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'*' {
                // Any run of two or more stars is `**`; a lone star is `*`.
                let run = bytes[i..].iter().take_while(|&&b| b == b'*').count();
                let token = if run >= 2 || syntax.separator().is_none() {
                    Token::AnyRun
                } else {
                    Token::Star
                };
                tokens.push(token);
                i += run;
            } else {
                tokens.push(Token::Literal(bytes[i]));
                i += 1;
            }
        }
        let literal = tokens.iter().all(|t| matches!(t, Token::Literal(_)));
        Glob {
            source: pattern.to_string(),
            syntax,
            tokens,
            literal,
        }
    }

    /// Whether `name` matches the whole pattern.
    pub(crate) fn matches(&self, name: &str) -> bool {
        let input = name.as_bytes();
        if self.literal {
            return input.len() == self.tokens.len()
                && input
                    .iter()
                    .zip(&self.tokens)
                    .all(|(&b, t)| matches!(t, Token::Literal(c) if self.syntax.same(*c, b)));
        }
        let sep = self.syntax.separator();
        // reach[i]: the tokens seen so far can consume exactly input[..i].
        let mut reach = vec![false; input.len() + 1];
        let mut next = vec![false; input.len() + 1];
        reach[0] = true;
        for token in &self.tokens {
            match *token {
                Token::Literal(c) => {
                    next[0] = false;
                    for i in 0..input.len() {
                        next[i + 1] = reach[i] && self.syntax.same(c, input[i]);
                    }
                }
                Token::Star => {
                    next[0] = reach[0];
                    for i in 1..=input.len() {
                        next[i] = reach[i] || (next[i - 1] && Some(input[i - 1]) != sep);
                    }
                }
                Token::AnyRun => {
                    next[0] = reach[0];
                    for i in 1..=input.len() {
                        next[i] = reach[i] || next[i - 1];
                    }
                }
            }
            std::mem::swap(&mut reach, &mut next);
            if !reach.iter().any(|&r| r) {
                return false;
            }
        }
        reach[input.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns(p: &str) -> Glob {
        Glob::new(p, Syntax::Dns)
    }

    fn uri(p: &str) -> Glob {
        Glob::new(p, Syntax::Uri)
    }

    #[test]
    fn literal_patterns() {
        assert!(dns("api.example.com").matches("API.Example.com"));
        assert!(!dns("api.example.com").matches("api.example.co"));
        assert!(uri("spiffe://prod/api").matches("spiffe://prod/api"));
        assert!(!uri("spiffe://prod/api").matches("spiffe://prod/API"));
        assert!(!Glob::new("client", Syntax::Text).matches("Client"));
    }

    #[test]
    fn star_stays_within_a_label_or_segment() {
        let g = dns("*.example.com");
        assert!(g.matches("a.example.com"));
        assert!(!g.matches("a.b.example.com"));
        assert!(!g.matches("example.com"));
        assert!(dns("**.example.com").matches("a.b.example.com"));
        assert!(dns("api-*.example.com").matches("api-eu1.example.com"));

        let g = uri("spiffe://prod/ns/*/sa/web");
        assert!(g.matches("spiffe://prod/ns/billing/sa/web"));
        assert!(!g.matches("spiffe://prod/ns/a/b/sa/web"));
        assert!(uri("spiffe://prod/**").matches("spiffe://prod/ns/a/sa/b"));
        assert!(!uri("spiffe://prod/**").matches("spiffe://staging/x"));
    }

    #[test]
    fn text_star_matches_anything() {
        let g = Glob::new("svc-*", Syntax::Text);
        assert!(g.matches("svc-"));
        assert!(g.matches("svc-a.b/c"));
        assert!(!g.matches("svc"));
        assert!(Glob::new("*", Syntax::Text).matches(""));
    }

    #[test]
    fn many_stars_stay_cheap() {
        // A backtracking matcher takes exponential time here.
        let g = Glob::new(&"*a".repeat(30), Syntax::Text);
        let name = "a".repeat(29) + "b";
        assert!(!g.matches(&name));
        assert!(g.matches(&"a".repeat(40)));
    }
}
