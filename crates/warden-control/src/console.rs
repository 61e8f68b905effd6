//! The web console: server-rendered HTML pages.

use crate::server::App;
use axum::Router;

/// Add the console's routes.
pub fn routes(r: Router<App>, _app: App) -> Router<App> {
    r
}
