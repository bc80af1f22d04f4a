"""tcpcopy.deploy"""
