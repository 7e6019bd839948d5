//! The upstream outcome: pooled hyper client, load balancing and proxy header handling
