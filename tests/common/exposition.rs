//! One parser of the text exposition's sample lines, for the tests and the fuzz targets
//! (fuzz/ includes this file by path; it depends on the standard library only).

use std::collections::BTreeMap;

/// Splits one text-format sample line, `name{a="1",b="2"} 3`, into its parts, unescaping label
/// values.
pub fn parse_sample(line: &str) -> Option<(String, BTreeMap<String, String>, f64)> {
    let split = line.find(['{', ' '])?;
    let name = line[..split].to_owned();
    let mut chars = line[split..].chars().peekable();
    let mut labels = BTreeMap::new();
    if chars.peek() == Some(&'{') {
        chars.next();
        loop {
            match chars.peek() {
                Some('}') => {
                    chars.next();
                    break;
                }
                Some(',') => {
                    chars.next();
                    continue;
                }
                _ => {}
            }
            let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
            if chars.next() != Some('"') {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()? {
                    '\\' => match chars.next()? {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break,
                    c => value.push(c),
                }
            }
            labels.insert(key, value);
        }
    }
    let value: String = chars.collect();
    Some((name, labels, value.trim().parse().ok()?))
}
