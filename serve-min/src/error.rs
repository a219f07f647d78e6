//! The server's errors: [`ApiError`] is what a client sees (an HTTP status and an
//! OpenAI-style JSON body), [`Error`] is what stops the server from starting.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error answered to one request: the status and `{"error": {"message", "type", "code"}}`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// The body is not what the endpoint takes (malformed JSON, a missing or ill-typed
    /// field, a value out of range, text that is not UTF-8).
    #[error("{0}")]
    InvalidRequest(String),
    /// The request names a model (skill) the server does not serve.
    #[error("model {0:?} is not served here (see /v1/models)")]
    UnknownModel(String),
    /// The prompt (plus the tokens asked for) does not fit the model's context.
    #[error("{0}")]
    ContextLength(String),
    /// The request asks for something this server does not do (e.g. `n` > 1, routing).
    #[error("{0}")]
    Unsupported(String),
    /// The request conflicts with the server's state (a skill already loaded, or still in
    /// use, a skillpack made for another backbone).
    #[error("{0}")]
    Conflict(String),
    /// The queue of waiting requests is full: retry later.
    #[error("the server is at capacity ({0} requests waiting); retry later")]
    Overloaded(usize),
    /// The body is larger than the server accepts.
    #[error("the request body exceeds {0} bytes")]
    TooLarge(usize),
    /// The client did not send its body in time.
    #[error("the request body did not arrive within {0} s")]
    Timeout(f64),
    /// The engine failed while running the request.
    #[error("generation failed: {0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest(_) | Self::ContextLength(_) | Self::Unsupported(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::UnknownModel(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `type` field of the body.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) | Self::Unsupported(_) | Self::TooLarge(_) => {
                "invalid_request_error"
            }
            Self::UnknownModel(_) => "model_not_found",
            Self::Conflict(_) => "conflict",
            Self::ContextLength(_) => "context_length_exceeded",
            Self::Overloaded(_) => "overloaded",
            Self::Timeout(_) => "timeout",
            Self::Internal(_) => "server_error",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.to_string(),
                "type": self.kind(),
                "code": self.status().as_u16(),
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        if matches!(self, Self::Overloaded(_)) {
            response
                .headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        response
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Loading the model, its tokenizer or a skillpack failed.
    #[error(transparent)]
    Model(#[from] skillzip_lm::Error),
    /// Reading a bundle failed.
    #[error(transparent)]
    Format(#[from] skillzip_format::Error),
    /// The configuration is impossible (named in the message).
    #[error("{0}")]
    Config(String),
    /// A socket could not be bound or served.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
