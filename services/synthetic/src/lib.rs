//! Synthetic (configured) responses as a Tower service
