//! Translation between OpenAI chat and Bedrock's Converse API.

mod request;
mod response;

pub(super) use request::to_converse;
pub(super) use response::parse_converse_response;
