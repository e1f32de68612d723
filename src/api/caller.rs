//! The [`Caller`] extractor (a bearer token validated by [`Auth`], then the tenant's request
//! rate) and how every [`Refusal`] of `auth` is answered. Here rather than in `auth`, which
//! knows no HTTP: `api` depends on `auth`, never the other way.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use edrgate_adapter::ErrorCode;

use super::problem::ApiError;
use crate::auth::{Auth, Caller, Refusal};

impl<S> FromRequestParts<S> for Caller
where
    Arc<Auth>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let auth = Arc::<Auth>::from_ref(state);
        let Some(header) = parts.headers.get(AUTHORIZATION) else {
            return Err(ApiError::unauthenticated("a bearer token is required", false));
        };
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty());
        let Some(token) = token else {
            return Err(ApiError::unauthenticated(
                "the Authorization header must be `Bearer <token>`",
                true,
            ));
        };
        let caller = auth.authenticate(token).await?;
        auth.check_rate(&caller.tenant)?;
        Ok(caller)
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> ApiError {
        match refusal {
            Refusal::BadToken(reason) => ApiError::unauthenticated(reason, true),
            Refusal::KeysUnavailable => ApiError::with_status(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Internal,
                Refusal::KeysUnavailable.to_string(),
            ),
            Refusal::Forbidden { detail, scopes } => {
                let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
                ApiError::insufficient_scope(detail, &scopes)
            }
            Refusal::RateLimited { detail, retry_after } => {
                ApiError::rate_limited(detail, retry_after)
            }
            Refusal::Internal => ApiError::internal(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
    use axum::response::IntoResponse as _;

    use super::*;

    #[test]
    fn refusals_are_answered_with_their_status_code_and_headers() {
        let answer = |refusal: Refusal| ApiError::from(refusal).into_response();
        let bad = answer(Refusal::BadToken("bad signature"));
        assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            bad.headers()[WWW_AUTHENTICATE],
            r#"Bearer realm="edrgate", error="invalid_token", error_description="bad signature""#
        );
        let error = ApiError::from(Refusal::KeysUnavailable);
        assert_eq!(
            (error.status(), error.code()),
            (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Internal)
        );
        let forbidden = ApiError::from(Refusal::Forbidden {
            detail: "missing permission admin (token scope edrgate:admin)".to_owned(),
            scopes: vec!["edrgate:admin".to_owned()],
        });
        assert_eq!(
            (forbidden.status(), forbidden.code()),
            (StatusCode::FORBIDDEN, ErrorCode::Forbidden)
        );
        assert_eq!(
            forbidden.problem().detail,
            "missing permission admin (token scope edrgate:admin)"
        );
        let response = forbidden.into_response();
        assert_eq!(
            response.headers()[WWW_AUTHENTICATE],
            r#"Bearer realm="edrgate", error="insufficient_scope", scope="edrgate:admin""#
        );
        // A wait under a second is still announced as one.
        let limited = Refusal::RateLimited {
            detail: "the tenant's request rate limit (60 per minute) is reached".to_owned(),
            retry_after: Duration::from_millis(400),
        };
        let error = ApiError::from(limited);
        assert_eq!(
            (error.status(), error.code()),
            (StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited)
        );
        assert_eq!(error.into_response().headers()[RETRY_AFTER], "1");
        let error = ApiError::from(Refusal::Internal);
        assert_eq!(
            (error.status(), error.code()),
            (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal)
        );
    }
}
