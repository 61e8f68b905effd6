//! warden-policy
