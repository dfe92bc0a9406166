//! Finite groups and their actions.
//!
//! Following escnn's design: group *elements* compose and invert ([`GroupElement`]); a
//! [`FiniteGroup`] is built from named factors by taking every product and closing it; common
//! groups come from named constructors ([`image::image_group`], [`perm::PermFactor`]); the
//! equivariance layers in [`crate::equi`] only consume groups through the [`crate::equi::Symmetry`]
//! trait.

pub mod fairness;
pub mod image;
pub mod perm;
pub mod scan;

use anyhow::{bail, Result};
use serde::Serialize;

/// The largest group order [`FiniteGroup::product`] builds. Every element costs one forward
/// pass per input (equitune/equizero run |G| copies) and the multiplication table |G|² entries,
/// so a product of more than 1,024 elements is a mistake (e.g. a spec repeating a factor many
/// times), not an experiment; the order is computed with checked arithmetic and compared with
/// this bound before any element is enumerated.
pub const MAX_GROUP_ORDER: usize = 1024;

/// The most factors a product group may have (the papers use at most three).
pub const MAX_GROUP_FACTORS: usize = 32;

/// An element of a concrete transformation group: it composes and inverts exactly. Elements
/// are hashable so that building a group's multiplication table is O(|G|²), not O(|G|³).
pub trait GroupElement: Clone + PartialEq + Eq + std::hash::Hash + std::fmt::Debug {
    /// `self ∘ other`: apply `other` first, then `self`.
    fn compose(&self, other: &Self) -> Self;
    fn inverse(&self) -> Self;
}

/// One named factor of a (product) group: a list of elements, the identity first.
#[derive(Clone, Debug)]
pub struct Factor<E> {
    pub name: String,
    /// What the factor does, in words (recorded in result JSON).
    pub action: String,
    pub elements: Vec<E>,
    pub element_names: Vec<String>,
}

/// A finite group given as the product of factors `G = G₁ × … × G_N`; element `(g₁,…,g_N)` is
/// the composition `g₁ ∘ … ∘ g_N`. The factors need not commute (rot90 × vflip = D4), but the
/// product must be a group of order `Π|Gᵢ|` (checked), and its multiplication table and
/// inverses are computed from the concrete elements, never assumed.
#[derive(Clone, Debug)]
pub struct FiniteGroup<E> {
    name: String,
    factors: Vec<Factor<E>>,
    elements: Vec<E>,
    coords: Vec<Vec<usize>>,
    mul: Vec<Vec<usize>>,
    inv: Vec<usize>,
}

/// Serializable description of a resolved group (for result JSON).
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct GroupInfo {
    pub name: String,
    pub order: usize,
    pub factors: Vec<FactorInfo>,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct FactorInfo {
    pub name: String,
    pub action: String,
    pub order: usize,
    pub elements: Vec<String>,
}

/// Π sizes as text, saturating into "more than 10^k" when it overflows u128.
fn order_text(sizes: &[usize]) -> String {
    let mut acc: u128 = 1;
    for &n in sizes {
        match acc.checked_mul(n as u128) {
            Some(v) => acc = v,
            None => return "more than 10^38".into(),
        }
    }
    acc.to_string()
}

impl<E: GroupElement> FiniteGroup<E> {
    /// Builds the product group of `factors`, checking that each factor starts with its
    /// identity, that the products are distinct (order = Π|Gᵢ|) and that the set is closed.
    pub fn product(name: &str, factors: Vec<Factor<E>>) -> Result<Self> {
        if factors.is_empty() {
            bail!("group '{name}' has no factors");
        }
        if factors.len() > MAX_GROUP_FACTORS {
            bail!(
                "group '{name}' has {} factors; at most {MAX_GROUP_FACTORS} are supported",
                factors.len()
            );
        }
        for f in &factors {
            if f.elements.is_empty() || f.elements.len() != f.element_names.len() {
                bail!(
                    "factor '{}' of group '{name}' is empty or mislabelled",
                    f.name
                );
            }
            let e = &f.elements[0];
            if &e.compose(e) != e {
                bail!(
                    "factor '{}' of group '{name}' does not list its identity first",
                    f.name
                );
            }
        }
        let sizes: Vec<usize> = factors.iter().map(|f| f.elements.len()).collect();
        // bound the order before enumerating anything (checked: many factors overflow usize)
        let order = sizes
            .iter()
            .try_fold(1usize, |acc, &n| {
                acc.checked_mul(n).filter(|&o| o <= MAX_GROUP_ORDER)
            })
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "group '{name}' would have {} elements (factor orders {}), more than the \
                     supported maximum of {MAX_GROUP_ORDER}: each element is one forward pass per \
                     input; use fewer factors",
                    order_text(&sizes),
                    sizes
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(" × ")
                )
            })?;
        let mut index: std::collections::HashMap<E, usize> =
            std::collections::HashMap::with_capacity(order);
        let mut elements = Vec::with_capacity(order);
        let mut coords = Vec::with_capacity(order);
        for flat in 0..order {
            // first factor outermost
            let mut c = vec![0; sizes.len()];
            let mut rem = flat;
            for i in (0..sizes.len()).rev() {
                c[i] = rem % sizes[i];
                rem /= sizes[i];
            }
            let mut el = factors[0].elements[c[0]].clone();
            for i in 1..sizes.len() {
                el = el.compose(&factors[i].elements[c[i]]);
            }
            if index.contains_key(&el) {
                bail!(
                    "the factors of group '{name}' are not independent: two products give the same \
                     transformation, so the group would have fewer than {order} elements"
                );
            }
            index.insert(el.clone(), elements.len());
            elements.push(el);
            coords.push(c);
        }
        let find = |x: &E, _elements: &[E]| index.get(x).copied();
        let mut mul = vec![vec![0; order]; order];
        for a in 0..order {
            for b in 0..order {
                let ab = elements[a].compose(&elements[b]);
                mul[a][b] = find(&ab, &elements).ok_or_else(|| {
                    anyhow::anyhow!("group '{name}' is not closed under composition")
                })?;
            }
        }
        let mut inv = vec![0; order];
        for a in 0..order {
            let ai = elements[a].inverse();
            inv[a] = find(&ai, &elements)
                .ok_or_else(|| anyhow::anyhow!("group '{name}' is not closed under inverses"))?;
        }
        Ok(Self {
            name: name.to_string(),
            factors,
            elements,
            coords,
            mul,
            inv,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn order(&self) -> usize {
        self.elements.len()
    }
    pub fn element(&self, g: usize) -> &E {
        &self.elements[g]
    }
    pub fn elements(&self) -> &[E] {
        &self.elements
    }
    /// Index of the identity element (always 0).
    pub fn identity(&self) -> usize {
        0
    }
    /// Index of `a ∘ b`.
    pub fn mul(&self, a: usize, b: usize) -> usize {
        self.mul[a][b]
    }
    pub fn inv(&self, a: usize) -> usize {
        self.inv[a]
    }
    pub fn n_factors(&self) -> usize {
        self.factors.len()
    }
    pub fn factors(&self) -> &[Factor<E>] {
        &self.factors
    }
    /// Factor coordinates `(c₁,…,c_N)` of element `g`.
    pub fn coords(&self, g: usize) -> &[usize] {
        &self.coords[g]
    }
    /// Human-readable name of element `g`, e.g. `rot90^1·vflip`.
    pub fn element_name(&self, g: usize) -> String {
        let parts: Vec<&str> = self.coords[g]
            .iter()
            .zip(&self.factors)
            .map(|(&c, f)| f.element_names[c].as_str())
            .collect();
        parts.join("·")
    }
    /// The elements of factor `i` (all other coordinates at the identity).
    pub fn factor_elements(&self, i: usize) -> Vec<usize> {
        (0..self.order())
            .filter(|&g| {
                self.coords[g]
                    .iter()
                    .enumerate()
                    .all(|(j, &c)| j == i || c == 0)
            })
            .collect()
    }
    /// The elements with coordinate `i` at the identity (the product of all other factors).
    pub fn complement_elements(&self, i: usize) -> Vec<usize> {
        (0..self.order())
            .filter(|&g| self.coords[g][i] == 0)
            .collect()
    }
    /// Whether every pair of elements commutes.
    pub fn is_abelian(&self) -> bool {
        (0..self.order()).all(|a| (0..self.order()).all(|b| self.mul[a][b] == self.mul[b][a]))
    }
    /// Whether elements of different factors commute (needed for output symmetrisation).
    pub fn factors_commute(&self) -> bool {
        for i in 0..self.n_factors() {
            for j in (i + 1)..self.n_factors() {
                for &a in &self.factor_elements(i) {
                    for &b in &self.factor_elements(j) {
                        if self.mul[a][b] != self.mul[b][a] {
                            return false;
                        }
                    }
                }
            }
        }
        true
    }
    pub fn info(&self) -> GroupInfo {
        GroupInfo {
            name: self.name.clone(),
            order: self.order(),
            factors: self
                .factors
                .iter()
                .map(|f| FactorInfo {
                    name: f.name.clone(),
                    action: f.action.clone(),
                    order: f.elements.len(),
                    elements: f.element_names.clone(),
                })
                .collect(),
        }
    }
}
