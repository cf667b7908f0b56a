//! whatsapp-rust session storage on sea-orm (being written).
