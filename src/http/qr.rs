//! QR codes as PNG images (`GET /api/qr/:id/image`).

use image::{ImageEncoder, Luma};
use qrcode::QrCode;

/// Renders `data` as a PNG (black on white, quiet zone included).
pub fn png(data: &str) -> Result<Vec<u8>, String> {
    let code = QrCode::new(data.as_bytes()).map_err(|e| e.to_string())?;
    let img = code.render::<Luma<u8>>().min_dimensions(256, 256).build();
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::L8,
        )
        .map_err(|e| e.to_string())?;
    Ok(out)
}
