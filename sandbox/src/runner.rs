//! Local process runner (written by a colleague).
