//! Names with an optional trailing `*`: the rooms a plugin declares, and the rooms and topics
//! an operator allows it. One rule for both: `weather.*` stands for every name that starts
//! with `weather.` and has something after it.

/// An exact name, or a prefix when written with a trailing `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamePattern {
    Exact(String),
    Prefix(String),
}

impl NamePattern {
    pub fn parse(pattern: &str) -> Self {
        match pattern.strip_suffix('*') {
            Some(prefix) => Self::Prefix(prefix.to_owned()),
            None => Self::Exact(pattern.to_owned()),
        }
    }

    /// Whether the concrete `name` is one this pattern stands for.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Self::Exact(exact) => exact == name,
            Self::Prefix(prefix) => name.len() > prefix.len() && name.starts_with(prefix.as_str()),
        }
    }

    /// Whether every name `declared` (a name or a pattern itself) stands for is one this
    /// pattern stands for: `weather.*` covers `weather.delhi` and `weather.in.*`.
    pub fn covers(&self, declared: &str) -> bool {
        match Self::parse(declared) {
            Self::Exact(name) => self.matches(&name),
            Self::Prefix(prefix) => match self {
                Self::Exact(_) => false,
                Self::Prefix(mine) => prefix.starts_with(mine.as_str()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_matches_longer_names_only() {
        let weather = NamePattern::parse("weather.*");
        assert!(weather.matches("weather.delhi"));
        assert!(!weather.matches("weather."));
        assert!(!weather.matches("crypto.global"));
        assert!(NamePattern::parse("crypto.global").matches("crypto.global"));
    }

    #[test]
    fn an_allowlist_pattern_covers_names_and_narrower_patterns() {
        let weather = NamePattern::parse("weather.*");
        assert!(weather.covers("weather.delhi"));
        assert!(weather.covers("weather.*"));
        assert!(weather.covers("weather.in.*"));
        assert!(!weather.covers("weather"));
        assert!(!weather.covers("*"));
        assert!(!weather.covers("news.*"));
        let exact = NamePattern::parse("crypto.global");
        assert!(exact.covers("crypto.global"));
        assert!(!exact.covers("crypto.*"));
    }
}
