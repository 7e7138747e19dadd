//! Activation checkpointing per block (Chen et al. 2016, "Training Deep Nets with Sublinear Memory
//! Cost"; PyTorch's `torch.utils.checkpoint`): with it on, a training forward keeps of each block
//! only its input and output; the backward runs the block again from its input, with the same
//! dropout masks and the same kernels, and takes its gradients from that second graph. The
//! gradients are those of the plain run (the same operations on the same values), for one more
//! forward per block.
//!
//! The weights' gradients of a recomputed block come out of the block's own backward, not the
//! main one: a trainer adds [`take_grads`] to the main gradients after each `backward()`.
use crate::error::Result;
use crate::gpt::DropoutRng;
use crate::kernels::{autocast_bf16, fused, set_fused, Autocast};
use candle_core::{backprop::GradStore, bail, CpuStorage, CustomOp1, DType, Layout, Shape};
use candle_core::{Tensor, TensorId, Var};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Mutex;

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static GRADS: RefCell<HashMap<TensorId, Tensor>> = RefCell::new(HashMap::new());
}

/// Activation checkpointing for training forwards on this thread while it lives (the previous
/// setting comes back on drop).
pub struct Checkpointing {
    previous: bool,
}

impl Checkpointing {
    pub fn blocks(on: bool) -> Self {
        let previous = ON.with(|c| c.replace(on));
        Checkpointing { previous }
    }
}

impl Drop for Checkpointing {
    fn drop(&mut self) {
        ON.with(|c| c.set(self.previous));
    }
}

/// The weight gradients the recomputed blocks gave in the backward passes since the last call,
/// by tensor id (summed when a weight got several).
pub fn take_grads() -> HashMap<TensorId, Tensor> {
    GRADS.with(|g| std::mem::take(&mut *g.borrow_mut()))
}

/// Adds the recomputed blocks' gradients to `store` (call after each `backward()`); gives how many
/// weights got one.
pub fn merge_grads(store: &mut GradStore) -> Result<usize> {
    let grads = take_grads();
    let n = grads.len();
    for (id, g) in grads {
        let sum = match store.get_id(id) {
            Some(acc) => (acc + g)?,
            None => g,
        };
        store.insert_id(id, sum);
    }
    Ok(n)
}

/// A block's forward from its input and the dropout generator.
pub(crate) type BlockFn = Box<dyn Fn(&Tensor, Option<&DropoutRng>) -> Result<Tensor> + Send + Sync>;

/// `block(x)`, checkpointed when the setting is on, the forward trains (`train`), `x` is on the
/// CPU and its graph reaches a trained weight (a block after only frozen ones is run plainly:
/// its input has no gradient to give).
pub(crate) fn block(x: &Tensor, train: Option<&DropoutRng>, block: BlockFn) -> Result<Tensor> {
    let on = ON.with(|c| c.get());
    let Some(rng) = train.filter(|_| on && x.track_op() && x.device().is_cpu()) else {
        return block(x, train);
    };
    let at = rng.state();
    // The forward's graph (the block's activations) is dropped with `y`'s detached copy.
    let y = block(&x.detach(), Some(rng))?.detach();
    let op = Recompute {
        y: Mutex::new(Some(y)),
        block,
        rng: at,
        autocast: autocast_bf16(),
        fused: fused(),
    };
    Ok(x.apply_op1(op)?)
}

struct Recompute {
    /// The block's output, handed over by the op's forward.
    y: Mutex<Option<Tensor>>,
    block: BlockFn,
    /// The dropout generator's state before the block.
    rng: (u64, u64),
    autocast: bool,
    fused: bool,
}

impl CustomOp1 for Recompute {
    fn name(&self) -> &'static str {
        "checkpointed-block"
    }

    fn cpu_fwd(&self, _s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = self.y.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(y) = y.filter(|y| y.dims() == l.dims()) else {
            bail!(
                "checkpointed block: no output of shape {:?} to hand over",
                l.dims()
            )
        };
        let y = y.flatten_all()?;
        let s = match y.dtype() {
            DType::F32 => CpuStorage::F32(y.to_vec1()?),
            DType::BF16 => CpuStorage::BF16(y.to_vec1()?),
            DType::F16 => CpuStorage::F16(y.to_vec1()?),
            DType::F64 => CpuStorage::F64(y.to_vec1()?),
            d => bail!("checkpointed block: activations in {d:?}"),
        };
        Ok((s, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let _autocast = Autocast::bf16(self.autocast);
        let was_fused = fused();
        set_fused(self.fused);
        let result = self.backward(x, dy);
        set_fused(was_fused);
        result.map_err(candle_core::Error::wrap)
    }
}

impl Recompute {
    /// The block run again from `x` as a variable: `x`'s gradient, and its weights' into
    /// [`GRADS`].
    fn backward(&self, x: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let x = Var::from_tensor(&x.detach())?;
        let rng = DropoutRng::at(self.rng);
        let y = (self.block)(x.as_tensor(), Some(&rng))?;
        // d sum(y * dy) / dy = dy exactly: the block's backward starts from dy.
        let mut store = (y * dy.detach())?.sum_all()?.backward()?;
        // Gradients computed through a weight keep the op that made them, and so the block's
        // whole graph: detached, the recomputed activations are freed when this returns.
        let dx = store.remove(x.as_tensor()).map(|g| g.detach());
        GRADS.with(|acc| -> Result<()> {
            let mut acc = acc.borrow_mut();
            for &id in store.get_ids() {
                let g = store.get_id(id).expect("an id of the store").detach();
                let sum = match acc.remove(&id) {
                    Some(prev) => (prev + g)?,
                    None => g,
                };
                acc.insert(id, sum);
            }
            Ok(())
        })?;
        Ok(dx)
    }
}
