"""tcpcopy.intercept"""
