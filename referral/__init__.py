"""referral: exchange of signed content referrals between public authorities and Internet providers."""

__version__ = "0.1.0"
