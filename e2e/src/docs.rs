//! What the docs promise, read from them so that a test runs exactly what a user copies.

/// The `ACL SETUSER <user> ...` rule `docs/operations.md` documents for `user` (the first such
/// line), with its password and, for the key patterns, `prefix` in place of `funcscale`:
/// the arguments of `ACL SETUSER`.
pub fn documented_rule(user: &str, password: &str, prefix: &str) -> Vec<String> {
    let doc = include_str!("../../docs/operations.md");
    let head = format!("ACL SETUSER {user} ");
    let line = doc
        .lines()
        .find_map(|l| l.trim().strip_prefix(&head))
        .unwrap_or_else(|| panic!("docs/operations.md documents no `{head}...` line"));
    let mut rule = vec![user.to_string()];
    for word in line.split_whitespace() {
        rule.push(match word {
            ">PASSWORD" => format!(">{password}"),
            w => w.replace("~funcscale:", &format!("~{prefix}:")),
        });
    }
    rule
}
