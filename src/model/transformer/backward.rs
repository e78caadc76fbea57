//! The backward pass: the tape a training forward pass records, and the gradients of every
//! parameter, walking the same blocks in reverse.
use super::*;

/// What the training forward pass keeps for the backward pass.
pub struct Tape<B: Backend = Cpu> {
    /// The input of every conv layer, in plan order.
    pub(super) inputs: Vec<B::Tensor>,
    /// Per instance norm: x̂ (normalised, before γ/β) and each sample's 1/σ (`[n, c, 1, 1]`).
    pub(super) xhat: Vec<B::Tensor>,
    pub(super) inv_std: Vec<B::Tensor>,
    /// The value the output function was applied to.
    pub(super) pre_output: Option<B::Tensor>,
    /// The forward pass ran on the fast kernels: the backward pass's input gradients may
    /// multiply in bfloat16 as its convolutions did ([`Backend::conv_forward_bf16`]).
    pub(super) bf16: bool,
}

impl<B: Backend> Transformer<B> {
    /// Gradients of a scalar loss with respect to every parameter, given d(loss)/d(output):
    /// the plan's blocks in reverse.
    pub fn backward(&self, tape: &Tape<B>, dy: &B::Tensor) -> Grads<B> {
        let b = &self.backend;
        let mut grads = Grads((0..self.params.len()).map(|_| None).collect());
        let mut d = dy.clone();
        let pre = tape.pre_output.as_ref().expect("a taped forward pass");
        b.output_backward(&mut d, pre, self.plan.output);
        let blocks = &self.plan.blocks;
        for (bi, block) in blocks.iter().enumerate().rev() {
            // What this block produced: the input of the next block's first conv.
            let out = blocks.get(bi + 1).map(|n| &tape.inputs[n.first_conv()]);
            d = match *block {
                Block::Output { conv, norm } => {
                    if let Some(n) = norm {
                        d = self.norm_backward(n, tape, &d, &mut grads);
                    }
                    match self.conv_backward(conv, tape, &d, bi > 0, &mut grads) {
                        Some(dx) => dx,
                        None => break,
                    }
                }
                Block::ConvNormRelu { conv, norm } => {
                    b.relu_mask(&mut d, out.expect("a block after it"));
                    let dz = self.norm_backward(norm, tape, &d, &mut grads);
                    match self.conv_backward(conv, tape, &dz, bi > 0, &mut grads) {
                        Some(dx) => dx,
                        None => break,
                    }
                }
                Block::Residual {
                    conv1,
                    norm1,
                    conv2,
                    norm2,
                } => {
                    let dz2 = self.norm_backward(norm2, tape, &d, &mut grads);
                    let mut da = self
                        .conv_backward(conv2, tape, &dz2, true, &mut grads)
                        .expect("dx");
                    b.relu_mask(&mut da, &tape.inputs[conv2]);
                    let dz1 = self.norm_backward(norm1, tape, &da, &mut grads);
                    let dx = self
                        .conv_backward(conv1, tape, &dz1, true, &mut grads)
                        .expect("dx");
                    b.add(&mut d, &dx);
                    d
                }
            };
        }
        grads
    }

    /// Backward of norm `i` given the gradient at its output (after any ReLU mask): the
    /// gradient at its input; γ/β gradients into `grads`.
    fn norm_backward(
        &self,
        i: usize,
        tape: &Tape<B>,
        dout: &B::Tensor,
        grads: &mut Grads<B>,
    ) -> B::Tensor {
        let layer = &self.plan.norms[i];
        let (dz, dg, db) = self.backend.norm_backward(
            &tape.xhat[i],
            dout,
            &tape.inv_std[i],
            &self.dev[layer.scale[self.style]],
        );
        // Only the active style's row: the other styles' are not touched by this batch.
        grads.0[layer.scale[self.style]] = Some(dg);
        grads.0[layer.shift[self.style]] = Some(db);
        dz
    }

    /// Backward of conv `i`: the gradient at its input (if wanted); W/b gradients into
    /// `grads`.
    fn conv_backward(
        &self,
        i: usize,
        tape: &Tape<B>,
        dz: &B::Tensor,
        want_dx: bool,
        grads: &mut Grads<B>,
    ) -> Option<B::Tensor> {
        let layer = &self.plan.convs[i];
        let mut x = &tape.inputs[i];
        // The first conv sees the image (0..255): its weight gradient Σ x·dz sums large
        // terms whose total nearly cancels, because dz (coming back through instance norm)
        // has zero mean per channel. Centring x per channel is exact in that case (with
        // reflection padding the padded pixels shift with it) and removes the cancellation:
        // without it float32 loses three digits on machines whose kernels sum in another
        // order (AVX2: 2.5e-3 relative error against PyTorch, 4e-7 with it).
        let centred;
        if i == 0
            && !want_dx
            && layer.spec.padding == Padding::Reflect
            && layer.spec.resample == Resample::None
        {
            centred = self.backend.centre(x);
            x = &centred;
        }
        let g = if tape.bf16 {
            self.backend
                .conv_backward_bf16(&self.convs[i], x, dz, want_dx)
        } else {
            self.backend.conv_backward(&self.convs[i], x, dz, want_dx)
        };
        grads.0[layer.weight] = Some(g.dw);
        if let Some(b) = layer.bias {
            grads.0[b] = Some(g.db);
        }
        g.dx
    }
}
