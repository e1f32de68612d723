//! Just enough of the Falcon Query Language for the filters clients send (§4.1, §5.4):
//! `field:'value'`, `field:*'*glob*'`, `field:['a','b']`, `field:!'value'`, `field:null`,
//! `field:true`, `field:>'x'`; `+` is AND and `,` is OR (`+` binds looser here: the filter is
//! an AND of OR groups, which covers every filter the clients of §0 build). Matching is
//! case-insensitive, as XSOAR's re-filtering of hostnames expects. Comparisons against `now…`
//! expressions are treated as true (the simulator keeps nothing old enough to fail them).

#[derive(Clone, Debug)]
enum Cmp {
    Eq(String),
    Glob(String),
    In(Vec<String>),
    Null,
    Greater(String),
    Less(String),
}

#[derive(Clone, Debug)]
struct Term {
    field: String,
    negated: bool,
    cmp: Cmp,
}

/// A parsed filter; the empty filter matches everything.
#[derive(Clone, Debug, Default)]
pub(crate) struct Filter {
    groups: Vec<Vec<Term>>,
}

/// Splits `s` at `sep` outside quotes and brackets.
fn split_top(s: &str, sep: char) -> Vec<&str> {
    let (mut out, mut depth, mut quote, mut start) = (Vec::new(), 0i32, None, 0);
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '[' | '(') => depth += 1,
            (None, ']' | ')') => depth -= 1,
            (None, c) if c == sep && depth == 0 => {
                out.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn unquote(v: &str) -> Result<String, String> {
    let v = v.trim();
    for q in ['\'', '"'] {
        if let Some(inner) = v.strip_prefix(q) {
            return inner
                .strip_suffix(q)
                .map(str::to_owned)
                .ok_or_else(|| format!("unterminated string in {v}"));
        }
    }
    if v.is_empty() {
        return Err("empty value".into());
    }
    Ok(v.to_owned())
}

fn parse_term(t: &str) -> Result<Term, String> {
    let t = t.trim().trim_start_matches('(').trim_end_matches(')').trim();
    let (field, value) = t.split_once(':').ok_or_else(|| format!("invalid filter term {t}"))?;
    let field = field.trim().to_ascii_lowercase();
    if field.is_empty() || !field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    {
        return Err(format!("invalid filter field {field}"));
    }
    let mut v = value.trim();
    let mut negated = false;
    if let Some(rest) = v.strip_prefix('!') {
        negated = true;
        v = rest.trim();
    }
    let cmp = if let Some(rest) = v.strip_prefix('*') {
        Cmp::Glob(unquote(rest)?.to_lowercase())
    } else if let Some(rest) = v.strip_prefix('[') {
        let inner = rest.strip_suffix(']').ok_or_else(|| format!("unterminated list in {v}"))?;
        let items = split_top(inner, ',')
            .into_iter()
            .map(|i| unquote(i).map(|s| s.to_lowercase()))
            .collect::<Result<Vec<_>, _>>()?;
        Cmp::In(items)
    } else if let Some(rest) = v.strip_prefix(">=").or_else(|| v.strip_prefix('>')) {
        Cmp::Greater(unquote(rest)?)
    } else if let Some(rest) = v.strip_prefix("<=").or_else(|| v.strip_prefix('<')) {
        Cmp::Less(unquote(rest)?)
    } else if v.eq_ignore_ascii_case("null") {
        Cmp::Null
    } else {
        Cmp::Eq(unquote(v)?.to_lowercase())
    };
    Ok(Term { field, negated, cmp })
}

/// `*` matches any run of characters (both sides lower-cased already).
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    for (i, p) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(p) else { return false };
            rest = r;
        } else if i + 1 == parts.len() {
            return rest.ends_with(p);
        } else {
            match rest.find(p) {
                Some(at) => rest = &rest[at + p.len()..],
                None => return false,
            }
        }
    }
    true
}

impl Filter {
    pub(crate) fn parse(s: &str) -> Result<Filter, String> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(Filter::default());
        }
        let groups = split_top(s, '+')
            .into_iter()
            .map(|g| split_top(g, ',').into_iter().map(parse_term).collect::<Result<Vec<_>, _>>())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Filter { groups })
    }

    /// The fields the filter names.
    pub(crate) fn fields(&self) -> impl Iterator<Item = &str> {
        self.groups.iter().flatten().map(|t| t.field.as_str())
    }

    pub(crate) fn matches(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        self.groups.iter().all(|g| {
            g.iter().any(|t| {
                let v = get(&t.field).map(|v| v.to_lowercase());
                let hit = match (&t.cmp, v.as_deref()) {
                    (Cmp::Null, v) => v.is_none_or(str::is_empty),
                    (_, None) => false,
                    (Cmp::Eq(x), Some(v)) => v == x,
                    (Cmp::Glob(p), Some(v)) => glob(p, v),
                    (Cmp::In(xs), Some(v)) => xs.iter().any(|x| x == v),
                    (Cmp::Greater(x), Some(v)) => {
                        x.starts_with("now") || v > x.to_lowercase().as_str()
                    }
                    (Cmp::Less(x), Some(v)) => {
                        x.starts_with("now") || v < x.to_lowercase().as_str()
                    }
                };
                hit != t.negated
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, platform: &str) -> impl Fn(&str) -> Option<String> {
        let (name, platform) = (name.to_owned(), platform.to_owned());
        move |f| match f {
            "hostname" => Some(name.clone()),
            "platform_name" => Some(platform.clone()),
            _ => None,
        }
    }

    #[test]
    fn hostname_filters() {
        let f = Filter::parse("hostname:'cs-win-0001'").unwrap();
        assert!(f.matches(host("CS-WIN-0001", "Windows")));
        assert!(!f.matches(host("CS-WIN-0002", "Windows")));
        let f = Filter::parse("hostname:*'*WIN*'+platform_name:'Windows'").unwrap();
        assert!(f.matches(host("CS-WIN-0002", "Windows")));
        assert!(!f.matches(host("CS-LNX-0001", "Linux")));
        let f = Filter::parse("hostname:['CS-LNX-0001','CS-MAC-0001'],platform_name:'Windows'")
            .unwrap();
        assert!(f.matches(host("CS-MAC-0001", "Mac")) && f.matches(host("X", "Windows")));
        let f = Filter::parse("hostname:!'CS-WIN-0001'").unwrap();
        assert!(!f.matches(host("CS-WIN-0001", "Windows")));
        let f = Filter::parse("deleted_at: null+hostname: 'x'").unwrap();
        assert!(f.matches(host("X", "")));
        assert!(Filter::parse("hostname:'open").is_err());
        assert!(Filter::parse("nonsense").is_err());
    }
}
