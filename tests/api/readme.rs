//! The README's worked examples, run as written: every `curl` of the SLO example blocks (the
//! Foxfire chain, then the half-hourly job) against a fresh application, each `# ->` line checked against the answer before it. A change to the
//! API that breaks the README breaks this test.

use reqwest::Method;

use crate::helpers::{Auth, spawn_app};

/// Splits a shell command line into words: single and double quotes, backslash-newline
/// continuations already joined.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            (None, c) => word.push(c),
        }
    }
    if any || !word.is_empty() {
        out.push(word);
    }
    out
}

/// One `curl` of the README: its method, path and body, and the fragments its answer holds.
#[derive(Debug)]
struct Call {
    method: Method,
    path: String,
    body: Option<String>,
    expect: Vec<String>,
}

/// The calls of the first ```bash block after `heading`.
fn calls(readme: &str, heading: &str) -> Vec<Call> {
    let from = readme.find(heading).expect("the example's heading");
    let block = &readme[from..];
    let start = block.find("```bash\n").expect("a bash block") + "```bash\n".len();
    let end = start + block[start..].find("```").expect("the block's end");
    let text = block[start..end].replace("\\\n", " ");
    // Commands: a line, joined with the next while a single quote is open.
    let mut lines: Vec<String> = Vec::new();
    for line in text.lines().map(str::trim) {
        match lines.last_mut() {
            Some(open) if open.matches('\'').count() % 2 == 1 => {
                open.push(' ');
                open.push_str(line);
            }
            _ => lines.push(line.to_owned()),
        }
    }
    let mut calls: Vec<Call> = Vec::new();
    for line in lines.iter().map(String::as_str) {
        if let Some(fragment) = line.strip_prefix("# ->") {
            let fragment = fragment.trim().to_owned();
            calls
                .last_mut()
                .expect("an answer after a call")
                .expect
                .push(fragment);
            continue;
        }
        if !line.starts_with("curl ") {
            continue;
        }
        let w = words(line);
        let mut method = None;
        let mut body = None;
        let mut path = None;
        let mut i = 1;
        while i < w.len() {
            match w[i].as_str() {
                "-X" => {
                    method = Some(w[i + 1].parse::<Method>().unwrap());
                    i += 1;
                }
                "-H" => i += 1,
                "-d" => {
                    body = Some(w[i + 1].clone());
                    i += 1;
                }
                url if url.starts_with("localhost:8080") => {
                    path = Some(url["localhost:8080".len()..].to_owned());
                }
                other => panic!("the README test does not know {other:?}"),
            }
            i += 1;
        }
        calls.push(Call {
            method: method.unwrap_or(if body.is_some() {
                Method::POST
            } else {
                Method::GET
            }),
            path: path.expect("a URL"),
            body,
            expect: Vec::new(),
        });
    }
    calls
}

#[tokio::test]
async fn the_foxfire_example_runs_as_written() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let chain = calls(&readme, "The Foxfire chain");
    assert!(chain.len() >= 8, "{chain:?}");
    assert!(chain.iter().any(|c| !c.expect.is_empty()));
    let half_hourly = calls(&readme, "The half-hourly transaction summary");
    assert!(half_hourly.len() >= 6, "{half_hourly:?}");
    let calls = chain.into_iter().chain(half_hourly);
    let app = spawn_app().await;
    for call in calls {
        let response = app
            .request(
                call.method.clone(),
                &call.path,
                &Auth::Header(1),
                call.body.as_deref(),
            )
            .await;
        assert!(
            response.status.is_success(),
            "{} {} answered {}: {}",
            call.method,
            call.path,
            response.status,
            response.text
        );
        let compact = response.body.to_string();
        for fragment in &call.expect {
            let fragment: String = fragment.split_whitespace().collect::<Vec<_>>().join("");
            assert!(
                compact.contains(&fragment),
                "{} {}: {fragment} not in {compact}",
                call.method,
                call.path
            );
        }
    }
}

#[test]
fn words_split_like_a_shell() {
    assert_eq!(
        words(r#"curl -X POST localhost:8080/v1 -d '{"a": "b c"}' "x y""#),
        vec![
            "curl",
            "-X",
            "POST",
            "localhost:8080/v1",
            "-d",
            r#"{"a": "b c"}"#,
            "x y"
        ]
    );
}
