//! The golden vectors of the numerical contract (computed outside the project, see
//! tests/data/contract.json) reproduced exactly by the reference quantizer and truncation.

use serde_json::Value;
use skillzip_core::quant::{
    ActScale, Bits, quantize_activation_row, truncate_row, truncation_scale,
};

fn vectors() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/contract.json"
    ))
    .expect("contract.json is part of the test data");
    serde_json::from_str(&text).expect("contract.json parses")
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

#[test]
fn quantize_rows_match_golden_vectors() {
    let cases = vectors()["quantize_rows"].as_array().unwrap().clone();
    assert!(cases.len() >= 10);
    for (n, case) in cases.iter().enumerate() {
        let x = f32s(&case["x"]);
        let s_inv = f32s(&case["s_inv"]);
        let mut q = vec![0i8; x.len()];
        let scale =
            quantize_activation_row(&x, Some(&s_inv), Bits::Int8, ActScale::Dynamic, &mut q);
        let want: Vec<i8> = ints(&case["q"]).into_iter().map(|v| v as i8).collect();
        assert_eq!(q, want, "case {n}: codes");
        let want_scale = case["scale"].as_f64().unwrap() as f32;
        assert_eq!(
            scale.to_bits(),
            want_scale.to_bits(),
            "case {n}: scale {scale} vs {want_scale}"
        );
    }
}

#[test]
fn truncate_rows_match_golden_vectors() {
    let cases = vectors()["truncate_rows"].as_array().unwrap().clone();
    assert!(cases.len() >= 10);
    for (n, case) in cases.iter().enumerate() {
        let z: Vec<i32> = ints(&case["z"]).into_iter().map(|v| v as i32).collect();
        let mut z_hat = vec![0i8; z.len()];
        let m = truncate_row(&z, &mut z_hat);
        let want: Vec<i8> = ints(&case["z_hat"]).into_iter().map(|v| v as i8).collect();
        assert_eq!(z_hat, want, "case {n}: ẑ");
        assert_eq!(m, case["M"].as_u64().unwrap(), "case {n}: M");
        assert_eq!(
            truncation_scale(m),
            case["rho"].as_f64().unwrap(),
            "case {n}: ρ"
        );
    }
}
