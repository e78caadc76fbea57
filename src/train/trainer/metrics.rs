//! Validation losses and preview grids.
use super::*;

/// Mean losses of the model over validation crops.
pub fn validate<B: Backend>(
    model: &Transformer<B>,
    vgg: &Vgg16<B>,
    target: &StyleTarget<B>,
    cfg: &LossConfig,
    imgs: &[Tensor],
) -> Losses {
    let b = model.backend();
    mean(
        imgs.iter()
            .map(|x| step::losses(model, vgg, target, cfg, &b.upload(x))),
    )
}

/// The mean of each loss term.
pub(super) fn mean(ls: impl Iterator<Item = Losses>) -> Losses {
    let (mut sum, mut n) = (Losses::default(), 0usize);
    for l in ls {
        sum.content += l.content;
        sum.style += l.style;
        sum.tv += l.tv;
        sum.pixel += l.pixel;
        sum.perceptual += l.perceptual;
        sum.stability += l.stability;
        sum.total += l.total;
        n += 1;
    }
    let n = n.max(1) as f64;
    Losses {
        content: sum.content / n,
        style: sum.style / n,
        tv: sum.tv / n,
        pixel: sum.pixel / n,
        perceptual: sum.perceptual / n,
        stability: sum.stability / n,
        total: sum.total / n,
    }
}

/// A grid: the validation photos on top, their stylizations below, a row per style row in
/// `rows` (with a teacher: the photos, the teacher's output, the student's).
pub fn preview<B: Backend>(
    model: &Transformer<B>,
    rows: &[usize],
    teacher: Option<&Transformer>,
    imgs: &[Tensor],
    path: &Path,
) -> Result<()> {
    let n = imgs.len().min(4);
    if n == 0 {
        return Ok(());
    }
    let s = imgs[0].h;
    let styled: Vec<Transformer<B>> = rows
        .iter()
        .map(|&k| {
            let mut m = model.clone();
            m.set_style(k);
            m
        })
        .collect();
    let height = 1 + usize::from(teacher.is_some()) + styled.len();
    let mut grid = image::RgbImage::new((n * s) as u32, (height * s) as u32);
    for (i, x) in imgs.iter().take(n).enumerate() {
        let mut shown = vec![x.clone()];
        if let Some(t) = teacher {
            shown.push(t.forward(x));
        }
        shown.extend(styled.iter().map(|m| m.forward(x)));
        for (row, t) in shown.iter().enumerate() {
            let hw = s * s;
            for py in 0..s {
                for px in 0..s {
                    let p = [0, 1, 2]
                        .map(|c| t.data[c * hw + py * s + px].round().clamp(0.0, 255.0) as u8);
                    grid.put_pixel((i * s + px) as u32, (row * s + py) as u32, image::Rgb(p));
                }
            }
        }
    }
    crate::imageio::write_path(&image::DynamicImage::ImageRgb8(grid), path)
}
