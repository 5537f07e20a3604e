//! Bearer-token check for admin calls.

use std::sync::Arc;

use tonic::{Request, Status};

/// Accepts a call when no token is configured, or when it carries `authorization: Bearer <token>`.
#[derive(Clone)]
pub(crate) struct BearerToken {
    expected: Option<Arc<str>>,
}

impl BearerToken {
    pub(crate) fn new(token: Option<String>) -> Self {
        BearerToken {
            expected: token.map(Arc::from),
        }
    }

    fn check(&self, request: &Request<()>) -> Result<(), Status> {
        let Some(expected) = &self.expected else {
            return Ok(());
        };
        let Some(value) = request.metadata().get("authorization") else {
            return Err(Status::unauthenticated(
                "missing authorization: send \"authorization: Bearer <token>\"",
            ));
        };
        let presented = value
            .to_str()
            .ok()
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
            })
            .unwrap_or("");
        if constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
            Ok(())
        } else {
            Err(Status::unauthenticated("invalid admin token"))
        }
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(&request)?;
        Ok(request)
    }
}

/// Compares without an early exit, so timing does not reveal how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor as _;

    fn request(authorization: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(value) = authorization {
            request
                .metadata_mut()
                .insert("authorization", value.parse().unwrap());
        }
        request
    }

    #[test]
    fn tokens_are_checked() {
        let mut open = BearerToken::new(None);
        assert!(open.call(request(None)).is_ok());
        let mut guarded = BearerToken::new(Some("0123456789abcdef".into()));
        let cases: &[(Option<&str>, bool)] = &[
            (None, false),
            (Some("Bearer 0123456789abcdef"), true),
            (Some("bearer 0123456789abcdef"), true),
            (Some("Bearer 0123456789abcdeX"), false),
            (Some("Bearer 0123456789abcdef0"), false),
            (Some("0123456789abcdef"), false),
            (Some("Basic 0123456789abcdef"), false),
        ];
        for (header, accepted) in cases {
            let result = guarded.call(request(*header));
            assert_eq!(result.is_ok(), *accepted, "{header:?}");
            if let Err(status) = result {
                assert_eq!(status.code(), tonic::Code::Unauthenticated);
            }
        }
    }
}
