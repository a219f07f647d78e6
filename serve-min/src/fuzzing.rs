//! The check behind the `http_body` fuzz target (and its corpus replay test): both
//! endpoints' body parsers on arbitrary bytes.

use crate::api::{MAX_STOP_BYTES, MAX_STOP_STRINGS, Prompt, parse_chat, parse_completion};

/// Parses `data` as a completion and as a chat body: each is a typed 4xx error with a JSON
/// body, or a request whose every field is in range.
pub fn check_request_bytes(data: &[u8]) {
    for (parsed, chat) in [(parse_completion(data), false), (parse_chat(data), true)] {
        match parsed {
            Ok(r) => {
                assert!(!r.model.is_empty());
                assert!(r.max_tokens.is_none_or(|n| n >= 1));
                assert!((0.0..=2.0).contains(&r.temperature));
                assert!(r.top_p > 0.0 && r.top_p <= 1.0);
                assert!(r.stop.len() <= MAX_STOP_STRINGS);
                assert!(
                    r.stop
                        .iter()
                        .all(|s| !s.is_empty() && s.len() <= MAX_STOP_BYTES)
                );
                match (&r.prompt, chat) {
                    (Prompt::Text(_), false) => {}
                    (Prompt::Tokens(ids), false) => assert!(!ids.is_empty()),
                    (Prompt::Chat(messages), true) => {
                        assert!(!messages.is_empty());
                        assert!(
                            messages
                                .iter()
                                .all(|m| ["system", "user", "assistant"].contains(&m.role.as_str()))
                        );
                    }
                    (prompt, _) => panic!("chat {chat} parsed as {prompt:?}"),
                }
            }
            Err(e) => {
                assert!(e.status().is_client_error(), "{e:?}");
                let body = e.body();
                assert_eq!(body["error"]["code"], e.status().as_u16());
                assert!(
                    !body["error"]["message"]
                        .as_str()
                        .unwrap_or_default()
                        .is_empty()
                );
            }
        }
    }
}
