#[macro_use]
extern crate log;

mod date;
mod http_server;
mod request;
mod response;

pub use http_server::{BadHead, HttpServer, HttpService, HttpServiceFactory};
pub use request::{BodyReader, Request, HEADER_CAPACITY};
pub use response::Response;
