//! Named parameters in a `persist` statement: `:name` becomes a positional placeholder, the same
//! name the same position. String literals, quoted identifiers, comments and `::` casts are left
//! alone, so `'a:b'`, `"x:y"` and `:n::int` mean what they say.

/// A statement rewritten for positional parameters.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Named {
    /// The SQL with `$1`, `$2`, … (PostgreSQL) or `?1`, `?2`, … (SQLite).
    pub sql: String,
    /// The parameter names, in position order.
    pub names: Vec<String>,
}

/// The placeholder style of a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    Dollar,
    Question,
}

/// Rewrite `:name` parameters. Names are letters, digits and `_`, starting with a letter or `_`.
pub(crate) fn rewrite(statement: &str, style: Style) -> Named {
    let mut sql = String::with_capacity(statement.len());
    let mut names: Vec<String> = Vec::new();
    let chars: Vec<char> = statement.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\'' | '"' => {
                // Copy a literal or quoted identifier whole ('' and "" escape the quote).
                sql.push(c);
                i += 1;
                while i < chars.len() {
                    sql.push(chars[i]);
                    if chars[i] == c {
                        if chars.get(i + 1) == Some(&c) {
                            sql.push(c);
                            i += 2;
                            continue;
                        }
                        i += 1;
                        break;
                    }
                    i += 1;
                }
            }
            '-' if chars.get(i + 1) == Some(&'-') => {
                while i < chars.len() && chars[i] != '\n' {
                    sql.push(chars[i]);
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                let start = i;
                while i < chars.len() {
                    sql.push(chars[i]);
                    let closes = i >= start + 3 && chars[i] == '/' && chars[i - 1] == '*';
                    i += 1;
                    if closes {
                        break;
                    }
                }
            }
            ':' if chars.get(i + 1) == Some(&':') => {
                sql.push_str("::");
                i += 2;
            }
            ':' if chars
                .get(i + 1)
                .is_some_and(|n| n.is_ascii_alphabetic() || *n == '_') =>
            {
                let start = i + 1;
                let mut end = start;
                while end < chars.len() && (chars[end].is_ascii_alphanumeric() || chars[end] == '_')
                {
                    end += 1;
                }
                let name: String = chars[start..end].iter().collect();
                let position = match names.iter().position(|n| *n == name) {
                    Some(p) => p + 1,
                    None => {
                        names.push(name);
                        names.len()
                    }
                };
                match style {
                    Style::Dollar => sql.push('$'),
                    Style::Question => sql.push('?'),
                }
                sql.push_str(&position.to_string());
                i = end;
            }
            _ => {
                sql.push(c);
                i += 1;
            }
        }
    }
    Named { sql, names }
}

/// A `persist` statement: one or more SQL statements (separated by `;`) run in order in one
/// transaction, with the record's values for the names they use.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Script {
    /// Every name the statements use, each once.
    pub names: Vec<String>,
    /// The statements.
    pub parts: Vec<Part>,
}

/// One statement of a [`Script`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Part {
    /// The SQL with positional placeholders.
    pub sql: String,
    /// For each placeholder, its name's index in [`Script::names`].
    pub args: Vec<usize>,
}

/// Split and rewrite a `persist` statement.
pub(crate) fn script(statement: &str, style: Style) -> Script {
    let mut names: Vec<String> = Vec::new();
    let parts = split(statement)
        .iter()
        .map(|piece| {
            let named = rewrite(piece, style);
            let args = named
                .names
                .into_iter()
                .map(|n| match names.iter().position(|m| *m == n) {
                    Some(i) => i,
                    None => {
                        names.push(n);
                        names.len() - 1
                    }
                })
                .collect();
            Part {
                sql: named.sql,
                args,
            }
        })
        .collect();
    Script { names, parts }
}

/// Split a script into its statements at top-level `;` (not inside literals, quoted identifiers
/// or comments); empty statements, and those of comments only, are dropped.
pub(crate) fn split(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    // Whether `current` holds anything but whitespace and comments.
    let mut has_sql = false;
    let mut quote: Option<char> = None;
    let mut line_comment = false;
    let mut block_comment = false;
    let mut chars = script.chars().peekable();
    while let Some(c) = chars.next() {
        current.push(c);
        let was_comment = line_comment || block_comment;
        if line_comment {
            line_comment = c != '\n';
        } else if block_comment {
            if c == '*' && chars.peek() == Some(&'/') {
                current.push('/');
                chars.next();
                block_comment = false;
            }
        } else if let Some(q) = quote {
            if c == q {
                quote = None;
            }
        } else if c == '\'' || c == '"' {
            quote = Some(c);
        } else if c == '-' && chars.peek() == Some(&'-') {
            line_comment = true;
        } else if c == '/' && chars.peek() == Some(&'*') {
            block_comment = true;
        } else if c == ';' {
            current.pop();
            let statement = std::mem::take(&mut current);
            if std::mem::take(&mut has_sql) {
                out.push(statement);
            }
            continue;
        }
        if quote.is_some() || !(was_comment || line_comment || block_comment || c.is_whitespace()) {
            has_sql = true;
        }
    }
    if has_sql {
        out.push(current);
    }
    out.into_iter().map(|s| s.trim().to_owned()).collect()
}

/// Replace the `$limit` placeholder of a `db-fetch` query; returns the SQL and whether it was
/// there. Literals and quoted identifiers are left alone.
pub(crate) fn rewrite_limit(query: &str, style: Style) -> (String, bool) {
    // `$limit` is the only name; reuse the `:name` scanner by swapping the sigil on a copy.
    let marked = query.replace("$limit", "\u{1}limit");
    let mut out = String::with_capacity(query.len());
    let mut found = false;
    let mut in_quote: Option<char> = None;
    let mut chars = marked.chars().peekable();
    while let Some(c) = chars.next() {
        match (in_quote, c) {
            (None, '\'' | '"') => {
                in_quote = Some(c);
                out.push(c);
            }
            (Some(q), _) if c == q => {
                in_quote = None;
                out.push(c);
            }
            (None, '\u{1}') => {
                found = true;
                for _ in 0.."limit".len() {
                    chars.next();
                }
                out.push_str(match style {
                    Style::Dollar => "$1",
                    Style::Question => "?1",
                });
            }
            (Some(_), '\u{1}') => out.push('$'),
            _ => out.push(c),
        }
    }
    (out, found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_parameters() {
        let cases = [
            (
                "INSERT INTO t (id, a) VALUES (:key, :a) ON CONFLICT (id) DO UPDATE SET a = :a",
                "INSERT INTO t (id, a) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET a = $2",
                vec!["key", "a"],
            ),
            (
                "SELECT ':nope', \"a:b\", :n::int",
                "SELECT ':nope', \"a:b\", $1::int",
                vec!["n"],
            ),
            (
                "SELECT 'it''s :x' || :y",
                "SELECT 'it''s :x' || $1",
                vec!["y"],
            ),
            ("SELECT 1 -- :c\n, :d", "SELECT 1 -- :c\n, $1", vec!["d"]),
            ("SELECT /* :c */ :e", "SELECT /* :c */ $1", vec!["e"]),
            ("SELECT x::text, :_f1", "SELECT x::text, $1", vec!["_f1"]),
        ];
        for (input, sql, names) in cases {
            let got = rewrite(input, Style::Dollar);
            assert_eq!(got.sql, sql, "{input}");
            assert_eq!(got.names, names, "{input}");
        }
        assert_eq!(
            rewrite("VALUES (:a, :b, :a)", Style::Question).sql,
            "VALUES (?1, ?2, ?1)"
        );
    }

    #[test]
    fn scripts_share_names() {
        let s = script(
            "INSERT INTO r VALUES (:key, :facts); UPDATE a SET done = 1 WHERE id = :key",
            Style::Dollar,
        );
        assert_eq!(s.names, ["key", "facts"]);
        assert_eq!(s.parts[0].sql, "INSERT INTO r VALUES ($1, $2)");
        assert_eq!(s.parts[0].args, [0, 1]);
        assert_eq!(s.parts[1].sql, "UPDATE a SET done = 1 WHERE id = $1");
        assert_eq!(s.parts[1].args, [0]);
    }

    #[test]
    fn splits_scripts() {
        let cases: [(&str, &[&str]); 7] = [
            ("INSERT 1; UPDATE 2;", &["INSERT 1", "UPDATE 2"]),
            (
                "SELECT ';' ; SELECT \"a;b\"",
                &["SELECT ';'", "SELECT \"a;b\""],
            ),
            (
                "SELECT 1 -- a; b\n; SELECT 2",
                &["SELECT 1 -- a; b", "SELECT 2"],
            ),
            ("SELECT /* ; */ 1", &["SELECT /* ; */ 1"]),
            ("UPDATE 1; -- done\n", &["UPDATE 1"]),
            ("-- only a comment", &[]),
            (" ; /* a */ ;\n", &[]),
        ];
        for (input, want) in cases {
            assert_eq!(split(input), want, "{input}");
        }
    }

    #[test]
    fn limit_placeholder() {
        let cases = [
            (
                "SELECT * FROM t LIMIT $limit",
                Style::Dollar,
                "SELECT * FROM t LIMIT $1",
                true,
            ),
            (
                "SELECT * FROM t LIMIT $limit",
                Style::Question,
                "SELECT * FROM t LIMIT ?1",
                true,
            ),
            (
                "SELECT '$limit' FROM t",
                Style::Dollar,
                "SELECT '$limit' FROM t",
                false,
            ),
            ("SELECT * FROM t", Style::Dollar, "SELECT * FROM t", false),
        ];
        for (input, style, want, found) in cases {
            assert_eq!(
                rewrite_limit(input, style),
                (want.to_owned(), found),
                "{input}"
            );
        }
    }
}
