//! Every relative link in the repository's Markdown points at a file or
//! directory inside the repository, and no link leaves it with `../`.

use std::path::{Component, Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable directory") {
        let path = entry.expect("directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if path.is_dir() {
            markdown_files(&path, out);
        } else if name.ends_with(".md") {
            out.push(path);
        }
    }
}

/// Link targets of `[text](target)` and `![alt](target)` outside code.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut in_fence = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        // Inline code spans are not links.
        let mut plain = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                plain.push_str(part);
            }
        }
        let mut rest = plain.as_str();
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            let target = after[..end].split_whitespace().next().unwrap_or("");
            targets.push(target.to_string());
            rest = &after[end..];
        }
    }
    targets
}

fn is_external(target: &str) -> bool {
    target.starts_with('#') || target.contains("://") || target.starts_with("mailto:")
}

#[test]
fn every_relative_markdown_link_resolves_inside_the_repository() {
    let root = repo();
    let mut files = Vec::new();
    markdown_files(&root, &mut files);
    assert!(files.len() > 3, "found only {files:?}");
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("utf-8 markdown");
        for target in link_targets(&text) {
            if target.is_empty() || is_external(&target) {
                continue;
            }
            let path = target.split('#').next().unwrap_or("");
            let resolved = file.parent().expect("a parent").join(path);
            // Resolve `..` lexically: the target may not exist.
            let mut normal = PathBuf::new();
            for c in resolved.components() {
                match c {
                    Component::ParentDir => {
                        normal.pop();
                    }
                    Component::CurDir => {}
                    other => normal.push(other),
                }
            }
            let shown = file.strip_prefix(&root).unwrap_or(file).display();
            if !normal.starts_with(&root) {
                broken.push(format!("{shown}: {target} leaves the repository"));
            } else if !normal.exists() {
                broken.push(format!("{shown}: {target} does not exist"));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_link_finder_sees_links_and_skips_code() {
    let md = "see [a](x.md) and ![b](img/y.png#z)\n`[c](not-a-link)`\n```\n[d](fenced)\n```\n[e](https://e.org)";
    assert_eq!(link_targets(md), ["x.md", "img/y.png#z", "https://e.org"]);
}
