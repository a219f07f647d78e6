//! Invariant checks the cargo-fuzz targets `gguf_reader` and `checkpoint_index` run on
//! arbitrary bytes, shared with the corpus-replay test so the two never drift apart.
//!
//! Each returns normally for any input that is handled correctly (accepted or rejected with a
//! typed error) and panics when an invariant breaks.

use crate::checkpoint::ShardIndex;
use crate::config::LlamaConfig;
use crate::gguf::GgufFile;
use crate::tokenizer::Tokenizer;

/// The GGUF reader on arbitrary bytes: a typed error or a file whose every supported tensor
/// dequantizes to exactly its element count; configuration and tokenizer building only ever
/// fail with typed errors.
pub fn check_gguf_bytes(data: &[u8]) {
    let Ok(file) = GgufFile::parse(data, "fuzz") else {
        return;
    };
    for info in &file.tensors {
        // The reader promised the element count is bounded by the bytes behind the tensor.
        assert!(info.elements() <= 2 * data.len() + 64, "{info:?}");
        if let Ok(values) = file.dequantize(info) {
            assert_eq!(values.len(), info.elements());
        }
    }
    let _ = LlamaConfig::from_gguf(&file);
    let _ = Tokenizer::from_gguf(&file.metadata);
}

/// The shard-index parser on arbitrary bytes: a typed error or an index whose every file name
/// is a plain `.safetensors` name.
pub fn check_index_bytes(data: &[u8]) {
    if let Ok(index) = ShardIndex::parse(data, "fuzz") {
        assert!(!index.weight_map.is_empty());
        for file in index.weight_map.values() {
            assert!(file.ends_with(".safetensors"));
            assert!(!file.contains(['/', '\\']) && file != ".." && !file.is_empty());
        }
    }
}
