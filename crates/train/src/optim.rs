//! AdamW with PyTorch's exact update, global-norm gradient clipping, and the book's learning-rate
//! schedule (appendix D: linear warmup from a start rate, then cosine decay to a minimum).
//!
//! The update (in place, in the order of `torch.optim.AdamW`'s single-tensor path) is
//! [`scratchllm_model::kernels::adamw_step`]; the moments live here as plain `f32` buffers.
use candle_core::{Result, Tensor, Var};
use scratchllm_model::kernels::{self, AdamWStep};

/// AdamW hyper-parameters (PyTorch defaults but the book's weight decay).
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 4e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }
}

/// One parameter's optimizer state.
#[derive(Clone, Debug)]
pub struct ParamState {
    pub name: String,
    pub var: Var,
    pub decay: bool,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

/// The optimizer over named parameters.
#[derive(Clone, Debug)]
pub struct AdamW {
    pub cfg: AdamWConfig,
    pub params: Vec<ParamState>,
    /// Steps taken (PyTorch's `state["step"]`).
    pub step: u64,
}

impl AdamW {
    /// `decay(name)` says whether weight decay applies (the book: to everything).
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig, decay: &dyn Fn(&str) -> bool) -> Self {
        let params = params
            .into_iter()
            .map(|(name, var)| {
                let n = var.elem_count();
                ParamState {
                    decay: decay(&name),
                    name,
                    var,
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                }
            })
            .collect();
        AdamW {
            cfg,
            params,
            step: 0,
        }
    }

    /// One update with gradients `grads[i]` for parameter `i` (`None` skips it), each first
    /// multiplied by `grad_scale` (the clipping coefficient, or 1). In place, multi-threaded on the
    /// CPU ([`kernels::adamw_step`]).
    pub fn update(&mut self, grads: &[Option<Tensor>], grad_scale: f32) -> Result<()> {
        self.step += 1;
        let c = &self.cfg;
        let bias1 = 1.0 - c.beta1.powi(self.step as i32);
        let bias2_sqrt = (1.0 - c.beta2.powi(self.step as i32)).sqrt();
        for (p, g) in self.params.iter_mut().zip(grads) {
            let Some(g) = g else { continue };
            let step = AdamWStep {
                decay: if p.decay {
                    (1.0 - c.lr * c.weight_decay) as f32
                } else {
                    1.0
                },
                beta1: c.beta1 as f32,
                beta2: c.beta2 as f32,
                eps: c.eps as f32,
                step_size: (c.lr / bias1) as f32,
                bias2_sqrt: bias2_sqrt as f32,
                grad_scale,
            };
            kernels::adamw_step(&p.var, g, &mut p.m, &mut p.v, &step)?;
        }
        Ok(())
    }
}

/// The global L2 norm of all gradients (`torch.nn.utils.clip_grad_norm_`'s total norm), summed in
/// f64.
pub fn global_norm(grads: &[Option<Tensor>]) -> Result<f32> {
    let mut sum = 0.0f64;
    for g in grads.iter().flatten() {
        sum += kernels::sum_of_squares(g)?;
    }
    Ok(sum.sqrt() as f32)
}

/// The factor PyTorch's `clip_grad_norm_` scales gradients by so their global norm is at most
/// `max_norm`: `max_norm / (norm + 1e-6)`, at most 1.
pub fn clip_coef(norm: f32, max_norm: f32) -> f32 {
    (max_norm / (norm + 1e-6)).min(1.0)
}

/// The learning rate per step (0-based).
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub peak_lr: f64,
    /// Linear warmup over this many steps from `warmup_start_lr` to `peak_lr` (0: none).
    pub warmup_steps: usize,
    pub warmup_start_lr: f64,
    /// Cosine decay from `peak_lr` to this after warmup; `None` keeps `peak_lr`.
    pub min_lr: Option<f64>,
    pub total_steps: usize,
}

impl Schedule {
    pub fn constant(lr: f64) -> Self {
        Schedule {
            peak_lr: lr,
            warmup_steps: 0,
            warmup_start_lr: lr,
            min_lr: None,
            total_steps: 0,
        }
    }

    /// The rate at `step`, as the book's appendix D loop computes it.
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            let increment = (self.peak_lr - self.warmup_start_lr) / self.warmup_steps as f64;
            return self.warmup_start_lr + step as f64 * increment;
        }
        match self.min_lr {
            None => self.peak_lr,
            Some(min) => {
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
                let progress = (step - self.warmup_steps) as f64 / span;
                min + (self.peak_lr - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}
