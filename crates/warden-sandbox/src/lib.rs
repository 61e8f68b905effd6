//! warden-sandbox
