//! The Portcullis data-plane node.
