//! What the resource modules share: the answer to a DELETE and the 404 of a service that is not
//! the caller's (kept here so that no resource module imports another).

use poem_openapi::ApiResponse;

use super::error::ApiError;

#[derive(ApiResponse)]
pub enum Deleted {
    /// Deleted.
    #[oai(status = 204)]
    NoContent,
}

/// 404 for a service that is not a live service of the caller.
pub fn service_not_found(id: i64) -> ApiError {
    ApiError::not_found(format!("service {id} not found"))
}
