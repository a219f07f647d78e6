//! The kernels' ABI, checked without a GPU: the parameter lists declared once in Rust
//! (`QUANTIZE_PARAMS`, `LOWRANK_PARAMS`) against
//!
//! - the `.entry` parameter lists of the embedded PTX (`QUANTIZE_PTX`, `LOWRANK_PTX`): names
//!   without the `p_` prefix, order, `.u32` / `.u64`;
//! - the parameter lists of `ptx/README.md` (names, order and types);
//! - the arguments the launch code in `src/lowrank.rs` pushes (names, order and widths, read
//!   from the source text of the two `KernelArgs` chains);
//!
//! and the launch constants (`QUANTIZE_THREADS`, `LOWRANK_THREADS`, `LOWRANK_SMEM_BYTES`)
//! against the PTX `.maxntid` and the README. A wrong order or type between the launch code
//! and a kernel would otherwise only show up on a GPU, as garbage.

use skillzip_cuda::device::{
    LOWRANK_KERNEL, LOWRANK_PARAMS, LOWRANK_PTX, LOWRANK_SMEM_BYTES, Param, QUANTIZE_KERNEL,
    QUANTIZE_PARAMS, QUANTIZE_PTX,
};
use skillzip_cuda::lowrank::{LOWRANK_THREADS, QUANTIZE_THREADS};

const README: &str = include_str!("../../ptx/README.md");
const LOWRANK_RS: &str = include_str!("../src/lowrank.rs");

fn ty(s: &str) -> Param {
    match s {
        "u32" => Param::U32,
        "u64" => Param::U64,
        other => panic!("unexpected parameter type `{other}`"),
    }
}

fn owned(list: &[(&str, Param)]) -> Vec<(String, Param)> {
    list.iter().map(|&(n, t)| (n.to_string(), t)).collect()
}

/// The text of `.entry <kernel>( … )` up to its closing parenthesis, and what follows it.
fn entry(ptx: &str, kernel: &str) -> (String, String) {
    let head = format!(".entry {kernel}(");
    assert_eq!(
        ptx.matches(".entry ").count(),
        1,
        "{kernel}: one .entry per file"
    );
    let start = ptx
        .find(&head)
        .unwrap_or_else(|| panic!("no `{head}` in the PTX"))
        + head.len();
    let len = ptx[start..].find(')').expect("unclosed parameter list");
    (
        ptx[start..start + len].to_string(),
        ptx[start + len + 1..].to_string(),
    )
}

/// `.param .u64 p_x,` lines → `[("x", U64), …]`, or what is wrong with a declaration.
fn ptx_params(ptx: &str, kernel: &str) -> Result<Vec<(String, Param)>, String> {
    let (list, _) = entry(ptx, kernel);
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|decl| {
            let words: Vec<&str> = decl.split_whitespace().collect();
            if words.len() != 3 || words[0] != ".param" {
                return Err(format!(
                    "{kernel}: unexpected parameter declaration `{decl}`"
                ));
            }
            let t = words[1]
                .strip_prefix('.')
                .ok_or_else(|| format!("{kernel}: `{decl}` has no type"))?;
            let name = words[2]
                .strip_prefix("p_")
                .ok_or_else(|| format!("{kernel}: `{decl}` lacks the p_ prefix"))?;
            Ok((name.to_string(), ty(t)))
        })
        .collect()
}

/// `.maxntid X, Y, Z` of the kernel (between the parameter list and the body).
fn maxntid(ptx: &str, kernel: &str) -> (u32, u32, u32) {
    let (_, rest) = entry(ptx, kernel);
    let body = rest.find('{').expect("no kernel body");
    let directives = &rest[..body];
    let at = directives
        .find(".maxntid")
        .unwrap_or_else(|| panic!("{kernel}: no .maxntid"));
    let line = directives[at + ".maxntid".len()..]
        .lines()
        .next()
        .unwrap_or("");
    let n: Vec<u32> = line
        .split(',')
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{kernel}: bad .maxntid `{line}`"))
        })
        .collect();
    assert_eq!(n.len(), 3, "{kernel}: .maxntid `{line}`");
    (n[0], n[1], n[2])
}

/// The README section of a kernel (from its `## \`kernel\`` heading to the next `## `).
fn readme_section(kernel: &str) -> String {
    let head = format!("## `{kernel}`");
    let start = README
        .find(&head)
        .unwrap_or_else(|| panic!("ptx/README.md has no `{head}` section"));
    let rest = &README[start + head.len()..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    // One line per paragraph, whitespace collapsed.
    rest[..end].split_whitespace().collect::<Vec<_>>().join(" ")
}

/// "Parameters, in order: `x` (u64), `x_dtype` (u32: …), …" → `[("x", U64), …]`: every
/// backticked name directly followed by ` (u32` or ` (u64`, up to the end of the sentence's
/// paragraph.
fn readme_params(kernel: &str) -> Vec<(String, Param)> {
    let section = readme_section(kernel);
    let marker = "Parameters, in order:";
    let start = section
        .find(marker)
        .unwrap_or_else(|| panic!("ptx/README.md, `{kernel}`: no `{marker}`"))
        + marker.len();
    let text = &section[start..];
    let end = text.find("Launch:").unwrap_or(text.len());
    let text = &text[..end];
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('`') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('`') else { break };
        let name = &after[..close];
        let tail = &after[close + 1..];
        for t in ["u32", "u64"] {
            if tail.starts_with(&format!(" ({t}")) {
                out.push((name.to_string(), ty(t)));
            }
        }
        rest = tail;
    }
    out
}

/// The arguments one `KernelArgs` chain of `src/lowrank.rs` pushes, in order: the chain that
/// names `params_const` in its `KernelArgs::new(…)`, up to its `.launch(`.
fn pushed_args(params_const: &str) -> Vec<(String, Param)> {
    let chains: Vec<&str> = LOWRANK_RS
        .match_indices("KernelArgs::new(")
        .map(|(i, _)| &LOWRANK_RS[i..])
        .filter(|c| {
            let new_call = &c[..c.find(';').unwrap_or(c.len())];
            new_call.contains(params_const)
        })
        .collect();
    assert_eq!(
        chains.len(),
        1,
        "src/lowrank.rs: expected one KernelArgs chain over {params_const}"
    );
    let chain = chains[0];
    let chain = &chain[..chain.find(".launch(").expect("the chain is never launched")];
    let methods = [
        ("u32", Param::U32),
        ("input", Param::U64),
        ("output", Param::U64),
        ("input_or_null", Param::U64),
        ("output_or_null", Param::U64),
    ];
    let mut out = Vec::new();
    let mut rest = chain;
    while let Some(call) = rest.find("(\"") {
        // The method: the identifier right before `("`, after a `.`.
        let before = &rest[..call];
        let ident_start = before
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
            .map_or(0, |i| i + 1);
        let method = &before[ident_start..];
        let after = &rest[call + 2..];
        let close = after.find('"').expect("unterminated string");
        let name = &after[..close];
        if before[..ident_start].ends_with('.') {
            let (_, width) = methods
                .iter()
                .find(|(m, _)| *m == method)
                .unwrap_or_else(|| panic!("unknown KernelArgs method `{method}(\"{name}\"…)`"));
            out.push((name.to_string(), *width));
        }
        rest = &after[close + 1..];
    }
    out
}

fn check_kernel(
    kernel: &str,
    ptx: &str,
    params_const: &str,
    declared: &[(&str, Param)],
    expected_len: usize,
    last: &[&str],
) {
    let declared = owned(declared);
    assert_eq!(declared.len(), expected_len, "{kernel}: parameter count");
    let tail: Vec<&str> = declared[expected_len - last.len()..]
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(tail, last, "{kernel}: last parameters");
    let mut names: Vec<&str> = declared.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), declared.len(), "{kernel}: duplicate names");

    assert_eq!(
        ptx_params(ptx, kernel).unwrap(),
        declared,
        "{kernel}: {params_const} vs the .entry of the PTX"
    );
    assert_eq!(
        readme_params(kernel),
        declared,
        "{kernel}: {params_const} vs ptx/README.md"
    );
    assert_eq!(
        pushed_args(params_const),
        declared,
        "{kernel}: the arguments src/lowrank.rs pushes vs {params_const}"
    );
}

#[test]
fn quantize_abi_matches_ptx_readme_and_launch_code() {
    check_kernel(
        QUANTIZE_KERNEL,
        QUANTIZE_PTX,
        "QUANTIZE_PARAMS",
        QUANTIZE_PARAMS,
        17,
        &["n_counters", "n_packs", "pack_rows", "pack_count"],
    );
}

#[test]
fn lowrank_abi_matches_ptx_readme_and_launch_code() {
    check_kernel(
        LOWRANK_KERNEL,
        LOWRANK_PTX,
        "LOWRANK_PARAMS",
        LOWRANK_PARAMS,
        21,
        &["acc_tap", "pack_rows", "pack_count"],
    );
}

#[test]
fn block_sizes_match_maxntid_and_readme() {
    assert_eq!(
        maxntid(QUANTIZE_PTX, QUANTIZE_KERNEL),
        (QUANTIZE_THREADS, 1, 1)
    );
    assert_eq!(
        maxntid(LOWRANK_PTX, LOWRANK_KERNEL),
        (LOWRANK_THREADS, 1, 1)
    );
    let q = readme_section(QUANTIZE_KERNEL);
    assert!(
        q.contains(&format!("block `({QUANTIZE_THREADS}, 1, 1)`")),
        "ptx/README.md: quantize block"
    );
    let l = readme_section(LOWRANK_KERNEL);
    assert!(
        l.contains(&format!("block `({LOWRANK_THREADS}, 1, 1)`")),
        "ptx/README.md: lowrank block"
    );
    assert!(
        l.contains(&format!("`LOWRANK_SMEM_BYTES = {LOWRANK_SMEM_BYTES}`")),
        "ptx/README.md: lowrank dynamic shared memory"
    );
}

/// The parsers themselves: a swapped pair, a wrong type or a missing prefix is seen.
#[test]
fn the_parsers_see_drift() {
    let good = QUANTIZE_PTX;
    let swapped = good.replacen(
        ".param .u32 p_x_dtype,\n    .param .u32 p_x_stride,",
        ".param .u32 p_x_stride,\n    .param .u32 p_x_dtype,",
        1,
    );
    assert_ne!(swapped, good, "the test's edit must apply");
    assert_ne!(
        ptx_params(&swapped, QUANTIZE_KERNEL).unwrap(),
        owned(QUANTIZE_PARAMS)
    );
    let retyped = good.replacen(".param .u32 p_r_max", ".param .u64 p_r_max", 1);
    assert_ne!(retyped, good);
    assert_ne!(
        ptx_params(&retyped, QUANTIZE_KERNEL).unwrap(),
        owned(QUANTIZE_PARAMS)
    );
    let unprefixed = good.replacen("p_pack_count", "pack_count", 1);
    assert!(
        ptx_params(&unprefixed, QUANTIZE_KERNEL)
            .unwrap_err()
            .contains("p_ prefix")
    );
    let wider = good.replacen(".maxntid 512, 1, 1", ".maxntid 256, 1, 1", 1);
    assert_eq!(maxntid(&wider, QUANTIZE_KERNEL), (256, 1, 1));
}
