//! Actors: the instance supervisor and one actor per WhatsApp number (see DESIGN.md).
